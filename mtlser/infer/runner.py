"""Labelling many recordings: batches by duration, windows for long ones, one error per failed input.

Each recording is probed (duration, rate), cut into windows when longer than ``window`` seconds
(:func:`mtlser.infer.audio.windows`), and the pieces are sorted by duration and batched so that a
batch holds at most ``batch_size`` pieces and ``batch_seconds`` of padded audio (memory is bounded
by these two, whatever the recordings' lengths). A recording that cannot be found, read or
decoded, or that is shorter than the model's receptive field, gets an error and the others are
labelled. Results come back in the order of the input.

A windowed recording's result lists its windows (start, end, emotion, probabilities, tokens) and
gives as the whole file's probabilities the mean of its windows' probabilities.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from mtlser.infer.audio import Recording, load, probe, windows
from mtlser.utils import MtlserError
from mtlser.utils.progress import progress as progress_of

logger = logging.getLogger(__name__)


@dataclass
class Labelled:
    """The outcome for one recording: a result or an error."""

    recording: Recording
    duration: float | None = None
    result: dict | None = None  # emotion, probs, tokens (unwindowed), windows (windowed)
    error: str | None = None
    _pieces: dict = field(default_factory=dict, repr=False)

    def as_json(self) -> dict:
        out: dict = {"id": self.recording.id, "file": self.recording.source}
        if self.error is not None:
            out["error"] = self.error
            return out
        out["duration"] = round(self.duration, 4) if self.duration is not None else None
        out.update(self.result or {})
        return out


def too_short(num_samples: int, min_samples: int, sample_rate: int) -> str:
    return (f"too short: {num_samples} samples at {sample_rate} Hz ({1000 * num_samples / sample_rate:.1f} ms); "
            f"this model needs at least {min_samples} ({1000 * min_samples / sample_rate:.1f} ms, the receptive "
            "field of its CNN)")


def plan_batches(lengths: list[float], batch_size: int, batch_seconds: float) -> list[list[int]]:
    """Indices of ``lengths`` (seconds) in batches: sorted by length, at most ``batch_size`` items and at most
    ``batch_seconds`` of padded audio (items x longest) per batch; a longer item is a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (len(cur) + 1 > batch_size or (len(cur) + 1) * lengths[i] > batch_seconds):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def _combine(pieces: list[tuple[float, float, dict]], emotions: list[str]) -> dict:
    """One recording's result from its pieces (start, end, result): itself, or the windows and their mean."""
    if len(pieces) == 1:
        return pieces[0][2]
    pieces = sorted(pieces, key=lambda p: p[0])
    out = {}
    if emotions:  # a dimensional-only model: attributes only
        mean = np.mean([[r["probs"][e] for e in emotions] for _, _, r in pieces], axis=0)
        out = {"emotion": emotions[int(np.argmax(mean))],
               "probs": {e: float(p) for e, p in zip(emotions, mean.tolist())}}
    if "attributes" in pieces[0][2]:
        names = list(pieces[0][2]["attributes"])
        out["attributes"] = {a: float(np.mean([r["attributes"][a] for _, _, r in pieces])) for a in names}
    out["windows"] = [{"start": round(a, 4), "end": round(b, 4), **r} for a, b, r in pieces]
    return out


def label(predictor, recordings: list[Recording], window: float = 0.0, hop: float = 0.0, batch_size: int = 16,
          batch_seconds: float = 60.0, durations: dict[str, float] | None = None, progress: bool = True,
          desc: str = "label") -> list[Labelled]:
    """Label ``recordings`` with ``predictor`` (an :class:`mtlser.infer.SERPredictor`); see the module doc.

    ``durations`` (id -> seconds, e.g. a data dir's utt2dur) spares probing; the audio read decides anyway.
    """
    if window > 0 and not 0 < hop <= window:
        raise MtlserError(f"--hop {hop}: must be in (0, window = {window}] seconds")
    if batch_size < 1 or batch_seconds <= 0:
        raise MtlserError(f"batch size {batch_size} and batch seconds {batch_seconds} must be positive")
    sr = predictor.sample_rate
    done = [Labelled(rec) for rec in recordings]
    pieces: list[tuple[int, float, float | None, int | None]] = []  # (recording, start, end or None, native rate)
    lengths: list[float] = []
    for i, rec in enumerate(recordings):
        if rec.error is not None:
            done[i].error = rec.error
            continue
        try:
            if durations is not None and rec.id in durations:
                dur, rate = float(durations[rec.id]), None
            else:
                dur, rate = probe(rec, sr)
        except MtlserError as e:
            done[i].error = str(e)
            continue
        done[i].duration = dur
        spans = windows(dur, window, hop)
        for a, b in spans:
            pieces.append((i, a, b if len(spans) > 1 else None, rate))  # whole: read to the end, whatever utt2dur
            lengths.append(b - a)
    batches = plan_batches(lengths, batch_size, batch_seconds)
    # A bar on a terminal, log lines in a log file (stage 4's decode logs): mtlser.utils.progress.
    for batch in progress_of(batches, desc=desc, unit="batch", logger=logger, disable=not progress or len(batches) < 2,
                             mininterval=1):
        wavs, keep = [], []
        for k in batch:
            i, a, b, rate = pieces[k]
            if done[i].error is None:
                try:
                    wav = load(recordings[i], sr, a, b, rate)
                    if len(wav) < predictor.min_samples:
                        raise MtlserError(too_short(len(wav), predictor.min_samples, sr))
                    wavs.append(wav)
                    keep.append(k)
                except MtlserError as e:
                    done[i].error = str(e)
        for k, wav, r in zip(keep, wavs, predictor.predict_batch(wavs) if wavs else []):
            i, a, b, _ = pieces[k]
            done[i]._pieces[k] = (a, a + len(wav) / sr if b is None else b, r)
    for d in done:
        if d.error is None and d._pieces:
            d.result = _combine(list(d._pieces.values()), predictor.emotions)
        elif d.error is None:
            d.error = "no audio"
        d._pieces = {}
    # Failures are reported by the caller, once each: mtlser-infer's error lines, the decode's utt2error.
    return done
