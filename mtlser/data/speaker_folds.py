"""Speaker-independent K-fold splits (protocol ``kfold<K>``): whole speakers dealt into K test folds.

For corpora with many speakers (CREMA-D's 91 actors) one fold per speaker is too
many trainings; K folds of whole speakers keep every test speaker unseen in
training while costing K trainings.

The scheme, deterministic (no seed; the folds depend only on the speaker ids and
genders): speakers are listed in C order, grouped by gender when the data dir has
a ``spk2gender`` (Kaldi's file: ``speaker m|f``; f first, then m), and dealt
round-robin, the i-th speaker of that list to fold (i mod K) + 1. Every speaker is
tested exactly once, fold sizes differ by at most one speaker, and with genders
known each fold's mix of women and men is as even as the counts allow (RAVDESS,
24 actors, K = 6: two women and two men per fold). Utterance counts per fold
follow the speakers' counts.
"""

from __future__ import annotations

import re
from pathlib import Path

from mtlser.data.datadir import DataDir, read_table, sort_key
from mtlser.utils import MtlserError

_KFOLD = re.compile(r"^kfold(\d+)$")


def kfold_k(protocol: str) -> int | None:
    """K of ``kfold<K>``, or None for another protocol."""
    m = _KFOLD.match(protocol)
    return int(m.group(1)) if m else None


def read_spk2gender(data_dir: Path | None, speakers: list[str]) -> dict[str, str] | None:
    """spk2gender of the data dir when it gives m or f for every speaker; None when there is none."""
    path = None if data_dir is None else Path(data_dir) / "spk2gender"
    if path is None or not path.is_file():
        return None
    genders = read_table(path)
    bad = {s: g for s, g in genders.items() if g not in ("m", "f")}
    if bad:
        raise MtlserError(f"{path}: genders must be m or f, got {bad}")
    missing = [s for s in speakers if s not in genders]
    if missing:
        raise MtlserError(f"{path}: no gender for speakers {missing[:5]}; give every speaker one, or remove the file")
    return genders


def deal_speakers(speakers: list[str], k: int, spk2gender: dict[str, str] | None = None) -> list[list[str]]:
    """The test speakers of each of the k folds (see the module doc)."""
    speakers = sorted(set(speakers), key=sort_key)
    if k < 2 or k > len(speakers):
        raise MtlserError(f"kfold{k}: K must be between 2 and the number of speakers ({len(speakers)})")
    if spk2gender is not None:
        speakers = sorted(speakers, key=lambda s: (spk2gender[s], sort_key(s)))
    folds: list[list[str]] = [[] for _ in range(k)]
    for i, spk in enumerate(speakers):
        folds[i % k].append(spk)
    return [sorted(f, key=sort_key) for f in folds]


def speaker_kfold(dd: DataDir, k: int) -> list[tuple[str, list[str]]]:
    """(fold description, test speakers) per fold, as mtlser.data.split.make_folds gives for the other protocols."""
    speakers = sorted(set(dd["utt2spk"].values()), key=sort_key)
    folds = deal_speakers(speakers, k, read_spk2gender(dd.path, speakers))
    return [(",".join(f), f) for f in folds]
