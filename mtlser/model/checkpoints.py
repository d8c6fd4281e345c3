"""Reading pretrained backbone weights from the user's local copy, safely.

Formats: a torchaudio state-dict file (what ``torchaudio.pipelines`` caches,
e.g. ``wav2vec2_fairseq_base_ls960.pth``; keys in torchaudio's naming) or a
``.safetensors`` file with the same keys. Untrusted files are never unpickled:
``torch.load(weights_only=True)`` or safetensors only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)


def load_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """A flat state dict from ``.safetensors`` or a weights-only torch file."""
    if not path.is_file():
        raise MtlserError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle with code, or not a torch file at all
        raise MtlserError(
            f"{path}: cannot be read as a weights-only torch file ({type(e).__name__}: {e}). "
            "mtlser never unpickles arbitrary objects; convert it to safetensors or a plain state dict."
        ) from None
    if not isinstance(obj, dict):
        raise MtlserError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    return obj


def read_pretrained(arch: str, path: Path, size: str = "base", custom: dict | None = None) -> tuple[dict, dict]:
    """Architecture arguments and a torchaudio-named state dict for ``path``."""
    from mtlser.model.backbone import architecture

    if not path.exists():
        raise MtlserError(f"{path}: pretrained backbone not found (backbone.init); give a local path")
    if path.is_dir():
        raise MtlserError(f"{path}: Hugging Face model dirs are not supported yet; give a torchaudio .pth state dict")
    state = load_tensor_file(path)
    return architecture(arch, size, custom), state


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every parameter or fail listing what is missing/unexpected (never a silent random init)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise MtlserError(
            f"{source}: does not match the {type(model).__name__} architecture: "
            f"{len(missing)} missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            f"{len(unexpected)} unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}. "
            "Check backbone.arch and backbone.size against the checkpoint."
        )
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise MtlserError(
            f"{source}: shape mismatch for {len(bad)} tensors, e.g. {k}: checkpoint {tuple(state[k].shape)} vs "
            f"model {tuple(own[k].shape)}. Check backbone.arch and backbone.size."
        )
    model.load_state_dict(state, strict=True)
