"""Shipping a trained model: packs (stage 6), ensembles of fold models, export to Hugging Face transformers.

- :mod:`mtlser.export.pack`: one .zip per model (weights, config, emotions, tokens, model card);
- :mod:`mtlser.export.card`: the model card's facts, read from what stages 2-5 wrote;
- :mod:`mtlser.export.hf`: a ``*ForSequenceClassification`` that gives mtlser's probabilities, or a refusal.

The command line is ``python -m mtlser.export {pack,ensemble,hf}`` (see its ``--help``).
"""
