"""CNN features computed once per utterance, for training with a frozen feature encoder.

With ``backbone.freeze_feature_encoder`` the CNN's output for an utterance never
changes, so epochs 2..100 need not recompute it: the trainer computes it once
(one utterance at a time, float32, no padding) and every epoch reads it back.
With ``backbone.padding_invariant_cnn`` this is exactly what the batched CNN
gives the same utterance inside a padded batch (tests/test_speed.py checks
loss and gradients).

Layout of one cache (``<cnn_cache_dir>/<fingerprint>/``)::

    meta.json          channels, dtype, what the fingerprint covers
    shard_K.f32        float32 rows of `channels` values, utterances one after another
    shard_K.tsv        utt  first_row  frames  samples  source   (written after its .f32 is complete)

The fingerprint hashes the CNN's weights and everything else its output
depends on, so folds and experiments with the same pretrained CNN share one
cache, and a different CNN can never read a stale one. Each utterance's entry
records its audio's identity (``source``: path, size and mtime, or the pipe
command; mtlser.utils.fileio.file_identity): audio that changed since it was
cached is computed again into a new shard, whose entry then wins. Several training jobs
may start at once (folds in parallel): a lock file serialises the builders,
and each adds a shard with the utterances that were still missing.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from mtlser.model.lengths import num_frames
from mtlser.utils import MtlserError
from mtlser.utils.fileio import file_identity

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: entries record their source audio's identity


def fingerprint(backbone, sample_rate: int) -> str:
    """A hash of everything the CNN output depends on: weights, layer config, normalisation."""
    h = hashlib.sha256()
    desc = {
        "version": FORMAT_VERSION,
        "arch": backbone.arch,
        "extractor": {k: backbone.arch_kwargs.get(k) for k in
                      ("extractor_mode", "extractor_conv_layer_config", "extractor_conv_bias")},
        "normalize_waveform": backbone.normalize_waveform,
        "padding_invariant_cnn": backbone.padding_invariant_cnn,
        "sample_rate": sample_rate,
    }
    h.update(json.dumps(desc, sort_keys=True, default=str).encode())
    for name, t in sorted(backbone.feature_extractor.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class CNNFeatureCache:
    """Read side: utterance id -> (frames (T, C) float32 memory-mapped, number of audio samples)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta = json.loads((self.root / "meta.json").read_text())
        self.channels = int(meta["channels"])
        #: The CNN's length formula, picklable (DataLoader workers): samples -> frames.
        self.frames_of = functools.partial(num_frames, spec=[tuple(kv) for kv in meta["conv_layers"]])
        # utt -> (shard, first row, frames, samples, source identity); later shards override earlier ones
        self.index: dict[str, tuple[int, int, int, int, str]] = {}
        self._maps: dict[int, np.memmap] = {}
        self.reload()

    def reload(self) -> None:
        for shard, tsv in sorted((int(p.stem.split("_")[1]), p) for p in self.root.glob("shard_*.tsv")):
            for line in tsv.read_text().splitlines():
                utt, first, frames, samples, source = line.split("\t", 4)
                self.index[utt] = (shard, int(first), int(frames), int(samples), source)

    def is_current(self, utt: str, source: str) -> bool:
        """Whether ``utt`` is cached from audio of this identity (mtlser.utils.fileio.file_identity)."""
        return utt in self.index and self.index[utt][4] == source

    def __contains__(self, utt: str) -> bool:
        return utt in self.index

    def __len__(self) -> int:
        return len(self.index)

    def get(self, utt: str) -> tuple[np.ndarray, int]:
        try:
            shard, first, frames, samples, _source = self.index[utt]
        except KeyError:
            raise MtlserError(f"{self.root}: no cached CNN features for '{utt}'") from None
        if shard not in self._maps:
            self._maps[shard] = np.memmap(self.root / f"shard_{shard}.f32", dtype="<f4", mode="r").reshape(
                -1, self.channels)
        return self._maps[shard][first:first + frames], samples

    def __getstate__(self) -> dict:  # DataLoader workers reopen the maps
        return {**self.__dict__, "_maps": {}}


@torch.no_grad()
def build_cache(backbone, utterances: Iterable[tuple[str, str]], cache_dir: str | Path, device: torch.device,
                sample_rate: int = 16000) -> CNNFeatureCache:
    """Compute and store the CNN output of every (utt, wav.scp entry) not cached yet; return the cache.

    The backbone must be the training model's (its frozen CNN); it is put in eval mode for the
    computation and restored. Uses no random numbers, so training stays reproducible.
    """
    from mtlser.data.dataset import read_audio

    root = Path(cache_dir) / fingerprint(backbone, sample_rate)
    root.mkdir(parents=True, exist_ok=True)
    channels = backbone.feature_extractor.conv_layers[-1].conv.out_channels
    conv_layers = [list(ks) for ks in backbone.conv_spec]
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others then find their utterances
        if not (root / "meta.json").is_file():
            meta = {"channels": channels, "conv_layers": conv_layers, "dtype": "float32",
                    "format_version": FORMAT_VERSION,
                    "arch": backbone.arch, "sample_rate": sample_rate,
                    "padding_invariant_cnn": backbone.padding_invariant_cnn}
            (root / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        cache = CNNFeatureCache(root)
        todo, stale = {}, []
        for utt, rx in utterances:
            if utt in todo:
                continue
            source = file_identity(rx)
            if not cache.is_current(utt, source):
                todo[utt] = (rx, source)
                if utt in cache:
                    stale.append(utt)
        if stale:
            logger.info("%d utterances' audio changed since their CNN features were cached; computing them again: %s",
                        len(stale), " ".join(stale[:20]) + (" ..." if len(stale) > 20 else ""))
        if todo:
            shard = 1 + max([int(p.stem.split("_")[1]) for p in root.glob("shard_*.tsv")], default=0)
            logger.info("caching CNN features of %d utterances -> %s (shard %d)", len(todo), root, shard)
            was_training = backbone.training
            backbone.eval()
            lines, row = [], 0
            f32 = root / f"shard_{shard}.f32"
            try:
                with open(f32, "wb") as f:
                    for utt, (rx, source) in todo.items():
                        wav = torch.from_numpy(read_audio(rx, sample_rate)).to(device)
                        x, frames = backbone.cnn(wav[None], torch.tensor([wav.numel()], device=device))
                        x = x[0, : int(frames[0])].float().cpu().numpy()  # (T, C)
                        f.write(np.ascontiguousarray(x, dtype="<f4").tobytes())
                        lines.append(f"{utt}\t{row}\t{x.shape[0]}\t{wav.numel()}\t{source}\n")
                        row += x.shape[0]
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:
                f32.unlink(missing_ok=True)
                raise
            finally:
                backbone.train(was_training)
            tmp = root / f".shard_{shard}.tsv.tmp"
            tmp.write_text("".join(lines))
            os.replace(tmp, root / f"shard_{shard}.tsv")  # the shard exists once its index does
            cache.reload()
    return cache
