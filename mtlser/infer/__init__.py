"""Inference with a trained model: the Python API behind stage 4 and the ``mtlser-infer`` command.

A model is a training dir (``exp/<tag>/foldNN``, ``exp/<tag>/final``), an ensemble dir
(``exp/<tag>/ensemble``), or a pack of either (``python -m mtlser.export pack``: one .zip). None
needs the recipe, ``path.sh``, or the pretrained checkpoint the backbone started from.

    from mtlser.infer import SERPredictor
    predictor = SERPredictor.from_pretrained("fold01.zip")       # or a model dir, or an ensemble
    result = predictor.predict_file("some.flac")                  # any rate, mono or stereo
    result["emotion"], result["probs"], result["tokens"]
    predictor.predict_batch([wav1, wav2])                         # mono float arrays at predictor.sample_rate

Many files at once, with batching, windows for long recordings and per-file errors:
:func:`mtlser.infer.runner.label`, or the command line (``python -m mtlser.infer``).
"""

from mtlser.infer.predictor import SERPredictor, ctc_greedy, load_model, read_model
from mtlser.infer import backends  # noqa: F401,E402  (registers the onnx backend with SERPredictor)

__all__ = ["SERPredictor", "ctc_greedy", "load_model", "read_model"]
