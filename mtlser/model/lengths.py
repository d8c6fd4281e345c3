"""The CNN feature encoder's length arithmetic, defined once.

Samples -> frames for a stack of 1-d convolutions without padding, as torchaudio's
``FeatureExtractor`` computes it, and the inverse question: the shortest input that
gives one frame (the receptive field). The backbone, the CNN feature cache, the
datasets and inference all read these functions, so a model's minimum input length
is a property of its own CNN, never a constant.

A CNN spec is a list of ``(kernel, stride)`` pairs, first layer first:

    >>> spec = conv_spec(None)            # wav2vec2/HuBERT/WavLM: 7 layers, 320x downsampling
    >>> receptive_field(spec), num_frames(16000, spec)
    (400, 49)
"""

from __future__ import annotations

from typing import Sequence, TypeVar

#: torchaudio's default feature extractor (wav2vec 2.0, HuBERT, WavLM): (channels, kernel, stride).
DEFAULT_CONV_LAYERS: tuple[tuple[int, int, int], ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2

N = TypeVar("N")  # an int, or a torch/numpy integer array


def conv_spec(conv_layer_config: Sequence[Sequence[int]] | None) -> list[tuple[int, int]]:
    """(kernel, stride) per layer from an ``extractor_conv_layer_config`` (None = torchaudio's default)."""
    layers = DEFAULT_CONV_LAYERS if conv_layer_config is None else conv_layer_config
    return [(int(kernel), int(stride)) for _, kernel, stride in layers]


def layer_frames(num: N, kernel: int, stride: int) -> N:
    """Outputs of one unpadded convolution over ``num`` inputs (0 when the input is shorter than the kernel)."""
    out = (num - kernel) // stride + 1  # floor division, for ints and tensors alike
    return out.clamp(min=0) if hasattr(out, "clamp") else max(0, out)  # type: ignore[return-value]


def num_frames(num_samples: N, spec: Sequence[tuple[int, int]]) -> N:
    """Frames the CNN makes from ``num_samples`` samples (an int or an integer tensor of lengths)."""
    n = num_samples
    for kernel, stride in spec:
        n = layer_frames(n, kernel, stride)
    return n


def receptive_field(spec: Sequence[tuple[int, int]]) -> int:
    """The shortest input, in samples, that gives one frame: 400 (25 ms at 16 kHz) for wav2vec2."""
    n = 1
    for kernel, stride in reversed(spec):
        n = (n - 1) * stride + kernel
    return n


def hop(spec: Sequence[tuple[int, int]]) -> int:
    """Samples between consecutive frames: the product of the strides (320 for wav2vec2)."""
    h = 1
    for _, stride in spec:
        h *= stride
    return h
