"""torch.compile for training (``train.compile``, ``train.compile_scope``, ``train.compile_dynamic``).

Batches are padded to the lengths of a ladder (``data.pad_ladder``), so a fold sees a few dozen
shapes over and over. Static (``dynamic=False``): each length is compiled once and reused for the
rest of the run (with ``reduce-overhead`` each also becomes a CUDA graph); compiling a length takes
long for wav2vec2-base, so that pays only over many epochs. Dynamic: the padded length is a
symbol, one graph serves every length (CUDA graphs are still recorded per length, which is cheap);
values computed from the length in Python (the FFT positional conv's transform size) still make
dynamo recompile when they change.

Scopes:
    layer        each transformer layer compiled on its own (torch.compile's per-module habit):
                 torch 2.11 reuses one graph for the identical layers, but each layer is its own
                 launch (with CUDA graphs: 12 replays a step) and the code between them runs eagerly
    transformer  the whole stack (feature projection, positional conv, every layer) as one
                 function: one graph per length
    backbone     CNN + transformer as one function (``extract_features``), and the transformer
                 alone for cached CNN features; the CNN is captured whole only when it reads no
                 lengths on the host (``backbone.cnn_norm_impl: fused``), otherwise dynamo splits
                 the graph there
"""

from __future__ import annotations

from typing import Any

import torch

SCOPES = ("layer", "transformer", "backbone")


def compile_backbone(backbone: Any, mode: str, scope: str, dynamic: bool = False, backend: Any = "inductor") -> None:
    """Compile ``backbone`` (a :class:`mtlser.model.backbone.Backbone`) in place.

    Args:
        mode: default | reduce-overhead (inductor's modes; CUDA graphs with the latter).
        scope: one of :data:`SCOPES`.
        dynamic: the padded length symbolic (one graph for all lengths) instead of one graph per length.
        backend: torch.compile's backend; the tests pass a counting one.
    """
    import torch._dynamo

    assert scope in SCOPES, f"compile scope must be one of {SCOPES}, got {scope!r}"
    # One graph per padded length of the ladder (~100 up to 25 s): more than torch's default of 8.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    kw: dict = {"dynamic": dynamic, "backend": backend}
    if backend == "inductor" and mode != "default":
        kw["mode"] = mode
    if scope == "layer":
        for layer in backbone.model.encoder.transformer.layers:
            layer.compile(**kw)
    elif scope == "transformer":
        backbone._transformer = torch.compile(backbone._transformer, **kw)
    else:
        # Two entry points, each one graph per length: audio in, or cached CNN features in.
        backbone.extract_features = torch.compile(backbone.extract_features, **kw)
        backbone.transformer_states = torch.compile(backbone.transformer_states, **kw)
