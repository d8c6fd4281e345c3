"""Training data: a data dir as a torch Dataset, batching by duration, padding.

The sampler is deterministic given (seed, epoch) and remembers how many
batches of the epoch were consumed, so the trainer checkpoints it as a whole
and a resumed run sees exactly the batches it would have seen.

With a frozen CNN the dataset can serve cached CNN features instead of audio
(:mod:`mtlser.data.cnn_cache`); :func:`collate` pads either to a length of a
geometric ladder (``pad_ladder``) so that batch shapes repeat.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from mtlser.data.datadir import read_table, sort_key
from mtlser.data.emotions import INVENTORY, NO_CLASS, NO_CLASS_INDEX, check_same, read_inventory
from mtlser.model.lengths import conv_spec, hop
from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)

#: The padding ladder's step: one frame of wav2vec2's CNN (320 samples, 20 ms at 16 kHz).
LADDER_QUANTUM = hop(conv_spec(None))


def read_audio(rxfile: str, sample_rate: int | None = None) -> np.ndarray:
    """Mono float32 samples of a wav.scp entry (a path, or a Kaldi pipe ``cmd |``)."""
    if rxfile.endswith("|"):
        import kaldiio

        rate, data = kaldiio.load_mat(rxfile)
        data = np.asarray(data)
        # kaldiio gives a wav's 16-bit samples as integers; scale them like soundfile does.
        scale = np.issubdtype(data.dtype, np.integer) or np.abs(data).max(initial=0) > 1.5
        data = data.astype(np.float32) / 32768.0 if scale else data.astype(np.float32)
    else:
        try:
            data, rate = sf.read(rxfile, dtype="float32", always_2d=True)
        except Exception as e:
            raise MtlserError(f"{rxfile}: cannot read audio ({e})") from None
    if data.ndim == 2:
        data = data.mean(axis=1)
    if sample_rate is not None and rate != sample_rate:
        raise MtlserError(f"{rxfile}: sample rate {rate} Hz, expected {sample_rate}; "
                          "the folds step converts audio, rerun it")
    return np.ascontiguousarray(data, dtype=np.float32)


class SERDataset(Dataset):
    """Utterances of one data dir: waveform, emotion index and CTC target ids.

    The emotion index is the label's position in ``emotions`` (the model's), default the data dir's
    inventory; given both, they must be equal (mtlser.data.emotions.check_same).

    With ``attributes`` (the model's attribute declaration, mtlser.data.attributes) items also carry the
    utterance's attribute values (``utt2attr``), and the data dir's declaration must equal the model's.
    """

    def __init__(
        self,
        data_dir: str | Path,
        token_list: list[str] | None = None,
        token_type: str = "phncls",
        emotions: list[str] | None = None,
        sample_rate: int = 16000,
        cache_audio: bool = False,
        max_duration: float = 0.0,
        attributes: list | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.sample_rate = sample_rate
        self.max_duration = max_duration
        wav_scp = read_table(self.data_dir / "wav.scp")
        utt2emo = read_table(self.data_dir / "utt2emo")
        self.utts = sorted(wav_scp, key=sort_key)
        self.wavs = [wav_scp[u] for u in self.utts]
        if (self.data_dir / INVENTORY).is_file() or emotions is None:
            inventory = read_inventory(self.data_dir)
            if emotions is not None:
                check_same(list(emotions), "the model's emotion list", inventory, str(self.data_dir / INVENTORY),
                           "a model classifies into its own list: use data whose inventory is that list")
            emotions = inventory
        # An utterance with no class (NO_CLASS, kept for its attributes) is left out of the CE term.
        emo_index = {**{e: i for i, e in enumerate(emotions)}, NO_CLASS: NO_CLASS_INDEX}
        self.emotions = []
        for u in self.utts:
            if u not in utt2emo:
                raise MtlserError(f"{self.data_dir / 'utt2emo'}: no label for '{u}'")
            if utt2emo[u] not in emo_index:
                raise MtlserError(f"{self.data_dir / 'utt2emo'}: '{u}' has label '{utt2emo[u]}', "
                                  f"expected one of {list(emotions)}")
            self.emotions.append(emo_index[utt2emo[u]])

        self.attributes = attributes
        self.attr_values: list[list[float]] | None = None
        if attributes is not None:
            from mtlser.data.attributes import read_declaration, read_values
            declared = read_declaration(self.data_dir)
            if declared != list(attributes):
                raise MtlserError(f"{self.data_dir / 'attributes'}: declares {[a.line() for a in declared]}, the model "
                                  f"{[a.line() for a in attributes]}; a model predicts its own attributes: use data "
                                  f"that declares them")
            values = read_values(self.data_dir, declared)
            lack = [u for u in self.utts if u not in values]
            if lack:
                raise MtlserError(f"{self.data_dir / 'utt2attr'}: no values for {len(lack)} utterance(s), e.g. {lack[:3]}")
            self.attr_values = [values[u] for u in self.utts]

        self.targets: list[list[int]] | None = None
        if token_list is not None:
            path = self.data_dir / f"text_{token_type}"
            if not path.is_file():
                raise MtlserError(f"{path}: no CTC targets of token set '{token_type}' (data.token_type); run "
                                  "the tokens and folds steps with the matching --token-type/--emo-tag/--nbpe")
            text = read_table(path, allow_empty_value=True)
            tok_index = {t: i for i, t in enumerate(token_list)}
            self.targets = []
            for u in self.utts:
                if u not in text:
                    raise MtlserError(f"{path}: no line for '{u}'; rerun the tokens step")
                ids = []
                for t in text[u].split():
                    if t not in tok_index:
                        raise MtlserError(f"{path}: '{u}' has token '{t}' that is not in the token list; "
                                          "rerun the tokens step so the two agree")
                    ids.append(tok_index[t])
                self.targets.append(ids)

        dur_file = self.data_dir / "utt2dur"
        if dur_file.is_file():
            utt2dur = read_table(dur_file)
            self.durations = [float(utt2dur[u]) for u in self.utts]
        else:
            self.durations = [sf.info(w).duration if not w.endswith("|") else 1.0 for w in self.wavs]
        self._cache: dict[int, np.ndarray] | None = {} if cache_audio else None
        self.training = False
        #: A CNNFeatureCache: when set, items carry CNN features (T, C) instead of audio.
        self.features = None

    def __len__(self) -> int:
        return len(self.utts)

    def drop_shorter_than(self, seconds: float) -> list[str]:
        """Remove utterances shorter than ``seconds`` (e.g. less than one CNN frame); returns their ids."""
        keep = [i for i, d in enumerate(self.durations) if d >= seconds]
        dropped = [self.utts[i] for i in range(len(self.utts)) if self.durations[i] < seconds]
        if dropped:
            self.utts = [self.utts[i] for i in keep]
            self.wavs = [self.wavs[i] for i in keep]
            self.emotions = [self.emotions[i] for i in keep]
            self.durations = [self.durations[i] for i in keep]
            if self.targets is not None:
                self.targets = [self.targets[i] for i in keep]
            if self.attr_values is not None:
                self.attr_values = [self.attr_values[i] for i in keep]
            if self._cache:
                raise RuntimeError("drop utterances before the audio cache fills")
        return dropped

    def extend(self, other: "SERDataset") -> None:
        """Add ``other``'s utterances (a fold's valid/ set into training), kept in one sorted order.

        The order is the one a single data dir holding both would give, so training on train/ + valid/
        is the same run as training on one dir with all of them (stage 2's --valid none).
        """
        if self._cache or other._cache or self.features is not None:
            raise RuntimeError("extend datasets before the audio or feature cache fills")
        if (self.targets is None) != (other.targets is None):
            raise RuntimeError("extend: one dataset has CTC targets and the other has none")
        if (self.attr_values is None) != (other.attr_values is None):
            raise RuntimeError("extend: one dataset has attribute values and the other has none")
        n = len(self) + len(other)
        rows = sorted(zip(self.utts + other.utts, self.wavs + other.wavs, self.emotions + other.emotions,
                          self.durations + other.durations,
                          (self.targets or []) + (other.targets or []) or [None] * n,
                          (self.attr_values or []) + (other.attr_values or []) or [None] * n),
                      key=lambda row: sort_key(row[0]))
        if len({row[0] for row in rows}) != len(rows):
            raise MtlserError(f"{self.data_dir} and {other.data_dir} share utterances; rerun the folds step")
        self.utts, self.wavs, self.emotions, self.durations, targets, attr_values = (list(col) for col in zip(*rows))
        if self.targets is not None:
            self.targets = targets
        if self.attr_values is not None:
            self.attr_values = attr_values

    def _audio(self, idx: int) -> np.ndarray:
        if self._cache is not None and idx in self._cache:
            return self._cache[idx]
        x = read_audio(self.wavs[idx], self.sample_rate)
        if self._cache is not None:
            self._cache[idx] = x
        return x

    def __getitem__(self, idx: int) -> dict:
        item = self._item(idx)
        if self.attr_values is not None:
            item["attributes"] = self.attr_values[idx]
        return item

    def _item(self, idx: int) -> dict:
        target = self.targets[idx] if self.targets is not None else []
        if self.features is not None:
            feats, num_samples = self.features.get(self.utts[idx])
            return {
                "utt": self.utts[idx],
                "feats": torch.from_numpy(np.array(feats, copy=True)),  # (T, C), out of the memory map
                "num_samples": num_samples,
                "emotion": self.emotions[idx],
                "target": torch.tensor(target, dtype=torch.long),
            }
        wav = self._audio(idx)
        if self.training and self.max_duration > 0 and len(wav) > self.max_duration * self.sample_rate:
            n = int(self.max_duration * self.sample_rate)
            start = int(torch.randint(0, len(wav) - n + 1, (1,)).item())
            wav = wav[start:start + n]
            target = []  # a cut utterance no longer matches its transcript: no CTC term
        return {
            "utt": self.utts[idx],
            "wav": torch.from_numpy(np.array(wav, copy=True)),
            "emotion": self.emotions[idx],
            "target": torch.tensor(target, dtype=torch.long),
        }


def ladder_length(n: int, ratio: float, quantum: int) -> int:
    """The smallest length >= n on the ladder q, 2q, ... (steps of q), then x ratio (rounded up to q).

    ratio = 1 gives n itself. With q = 320 samples (one wav2vec2 frame) and ratio 1.05 the ladder
    has ~100 lengths up to 20 s; a batch is padded by (ratio - 1) / 2 of its length on average.
    """
    if ratio <= 1.0:
        return n
    v = quantum
    while v < n:
        v = max(v + quantum, quantum * math.ceil(v * ratio / quantum))
    return v


def collate(items: list[dict], pad_ladder: float = 1.0, frames_of=None) -> dict:
    """Pad wavs (B, S) with 0, or cached CNN features (B, T, C) with 0, and targets (B, L) with -1.

    Audio is padded to the longest item's length, raised to :func:`ladder_length` with ``pad_ladder``.
    Features are padded to ``frames_of(that padded audio length)``: the frames the CNN would have
    made of the padded audio, so that cached and uncached batches have the same shapes (and
    dropout draws the same random numbers). ``num_samples`` (B,) is each utterance's audio length.
    """
    B = len(items)
    out: dict = {"utts": [it["utt"] for it in items]}
    if "feats" in items[0]:
        assert frames_of is not None, "collating CNN features needs frames_of (the CNN's length formula)"
        feat_lens = torch.tensor([len(it["feats"]) for it in items], dtype=torch.long)
        S = ladder_length(max(int(it["num_samples"]) for it in items), pad_ladder, LADDER_QUANTUM)
        T = max(int(frames_of(S)), int(feat_lens.max()))
        feats = torch.zeros(B, T, items[0]["feats"].shape[1], dtype=items[0]["feats"].dtype)
        for i, it in enumerate(items):
            feats[i, : len(it["feats"])] = it["feats"]
        out.update(feats=feats, feat_lens=feat_lens,
                   num_samples=torch.tensor([it["num_samples"] for it in items], dtype=torch.long))
    else:
        wav_lens = torch.tensor([len(it["wav"]) for it in items], dtype=torch.long)
        S = ladder_length(int(wav_lens.max()), pad_ladder, LADDER_QUANTUM)
        wavs = torch.zeros(B, S, dtype=items[0]["wav"].dtype)
        for i, it in enumerate(items):
            wavs[i, : len(it["wav"])] = it["wav"]
        out.update(wavs=wavs, wav_lens=wav_lens, num_samples=wav_lens.clone())
    target_lens = torch.tensor([len(it["target"]) for it in items], dtype=torch.long)
    targets = torch.full((B, max(1, int(target_lens.max()))), -1, dtype=torch.long)
    for i, it in enumerate(items):
        targets[i, : len(it["target"])] = it["target"]
    out.update(emotions=torch.tensor([it["emotion"] for it in items], dtype=torch.long),
               targets=targets, target_lens=target_lens)
    if "attributes" in items[0]:
        out["attributes"] = torch.tensor([it["attributes"] for it in items], dtype=torch.float32)  # (B, K)
    return out


class BatchSampler(Sampler[list[int]]):
    """Batches of utterance indices; deterministic in (seed, epoch), resumable mid-epoch.

    batching="random": a random permutation cut into batches (the paper).
    batching="bucket": a random permutation, sorted by duration inside windows of
    ``window`` batches, cut into batches, batch order shuffled: the same utterances
    per epoch in a different grouping, with little padding.
    shuffle=False (evaluation): sorted by duration, fixed.

    With world_size > 1 (torchrun) the batches of one process are dealt out by ``distribute``:
    "shard" (training) splits every batch over the ranks (rank r takes items r, r + world_size, ...),
    so batch_size stays the global batch and every rank takes the same number of steps; a rank
    left without an item takes a stand-in (the batch's first item) that :meth:`shard_sizes`
    reports as 0 utterances, so that its loss weighs nothing. "round_robin" (evaluation) deals
    whole batches out: rank r takes batches r, r + world_size, ...
    """

    def __init__(self, durations: list[float], batch_size: int, batching: str = "bucket", window: int = 50,
                 shuffle: bool = True, seed: int = 1, rank: int = 0, world_size: int = 1, distribute: str = "shard"):
        self.durations = np.asarray(durations, dtype=np.float64)
        self.batch_size = batch_size
        self.batching = batching
        self.window = max(1, window)
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        assert distribute in ("shard", "round_robin"), distribute
        self.distribute = distribute
        self.epoch = 0
        self.batches_done = 0  # of the current epoch (the same on every rank with distribute="shard")

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.batches_done = 0
        self.epoch = epoch

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch`` as one process takes them."""
        n = len(self.durations)
        if not self.shuffle:
            order = np.argsort(self.durations, kind="stable").tolist()
            batches = [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        else:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            perm = torch.randperm(n, generator=g).tolist()
            if self.batching == "bucket":
                span = self.batch_size * self.window
                chunks = [perm[i:i + span] for i in range(0, n, span)]
                perm = [j for c in chunks for j in sorted(c, key=lambda k: self.durations[k])]
            batches = [perm[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
            if self.batching == "bucket":
                order = torch.randperm(len(batches), generator=g).tolist()
                batches = [batches[i] for i in order]
        return batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch`` (all of them in a single process)."""
        batches = self.global_batches(epoch)
        if self.world_size == 1:
            return batches
        if self.distribute == "round_robin":
            return batches[self.rank::self.world_size]
        return [b[self.rank::self.world_size] or b[:1] for b in batches]

    def shard_sizes(self, epoch: int) -> list[tuple[int, int]]:
        """Per batch of ``epoch``: (utterances of this rank's shard, of the whole batch); 0 for a stand-in."""
        return [(len(b[self.rank::self.world_size]), len(b)) for b in self.global_batches(epoch)]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches(self.epoch)
        for b in batches[self.batches_done:]:
            self.batches_done += 1
            yield b
        self.batches_done = 0
        # Next epoch unless set_epoch says otherwise.
        self.epoch += 1

    def __len__(self) -> int:
        return len(self.epoch_batches(self.epoch)) - self.batches_done

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])

    def padding_share(self, epoch: int = 0, pad_ladder: float = 1.0, sample_rate: int = 16000) -> float:
        """Fraction of padded samples over an epoch's batches (for the logs and benchmarks).

        With ``pad_ladder`` > 1 the batch length is raised as :func:`collate` does.
        """
        return padding_share(self.epoch_batches(epoch), self.durations, pad_ladder, sample_rate)


def padding_share(batches: list[list[int]], durations, pad_ladder: float = 1.0, sample_rate: int = 16000) -> float:
    """Padded share of the (batch size x padded length) samples of ``batches``."""
    durations = np.asarray(durations, dtype=np.float64)
    total = padded = 0.0
    for b in batches:
        d = durations[b]
        longest = d.max()
        if pad_ladder > 1.0:
            longest = ladder_length(int(round(longest * sample_rate)), pad_ladder, LADDER_QUANTUM) / sample_rate
        total += longest * len(b)
        padded += longest * len(b) - d.sum()
    return padded / total if total else 0.0


def batch_to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}
