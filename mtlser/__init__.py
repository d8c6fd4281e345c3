"""mtlser: speech emotion recognition with multi-task learning (Li et al.), as an ESPnet/Kaldi-style recipe."""

#: The package version (pyproject.toml reads it from here).
__version__ = "0.1.0"
