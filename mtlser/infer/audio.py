"""Recordings to label: finding them (files, folders, lists, wav.scp) and reading them for a model.

Inputs, as the command line takes them:

- an audio file (by extension: :data:`AUDIO_EXTENSIONS`, whatever soundfile decodes);
- a folder: every audio file under it, recursively, in sorted order;
- a Kaldi ``wav.scp`` (a file named ``wav.scp`` or ``*.scp``): ``id path`` or ``id command |`` lines (the
  commands run only with ``allow_pipes``, the command line's ``--allow-pipes``),
  relative paths taken from the working dir (Kaldi's convention);
- any other file: a list, one path a line (``#`` comments), relative paths taken from the list's dir.

A recording's id is its wav.scp key, else its path as found (``folder/sub/a.flac``). Audio of any
rate and channel count is mixed down to mono and resampled to the model's rate; a window of a long
file is read by seeking, so a recording of hours never has to fit in memory.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)

#: File name extensions taken as audio when a folder is searched (formats soundfile/libsndfile reads).
AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au",
                    ".snd", ".caf", ".w64", ".rf64", ".sph")


@dataclass
class Recording:
    """One thing to label: an id, where its audio is, and (when known) what stops it being read."""

    id: str
    source: str  # a file path, or a wav.scp entry (a path or a `command |` pipe)
    error: str | None = None  # set when the input cannot even be found

    @property
    def is_pipe(self) -> bool:
        return self.source.rstrip().endswith("|")


def is_audio_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def read_scp(path: Path, allow_pipes: bool = False) -> list[Recording]:
    """A Kaldi wav.scp: ``id rxfile`` lines (a path, or, with ``allow_pipes``, a command ending in ``|``).

    A pipe is a shell command: someone labelling a wav.scp they were handed does not expect it to run
    anything, so commands are refused unless asked for (the recipe's stage 4 reads its own data dirs).
    """
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise MtlserError(f"{path}:{lineno}: expected 'id path' (or 'id command |'), got {line!r}")
        rec = Recording(parts[0], parts[1].strip())
        if rec.is_pipe and not allow_pipes:
            raise MtlserError(f"{path}:{lineno}: '{rec.id}' is a command ({rec.source[:80]!r}); mtlser-infer runs "
                              "the commands of a wav.scp only with --allow-pipes (check them first)")
        out.append(rec)
    return out


def _folder(path: Path, shown: str) -> list[Recording]:
    found = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if is_audio_file(name) and not name.startswith("."):
                full = Path(root) / name
                found.append(Recording(os.path.join(shown, os.path.relpath(full, path)), str(full)))
    if not found:
        logger.warning("%s: no audio files (%s) under it", shown, " ".join(AUDIO_EXTENSIONS))
    return found


def _list_file(path: Path, allow_pipes: bool) -> list[Recording]:
    out = []
    first = None
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        listed = Path(line) if os.path.isabs(line) else path.parent / line
        first = first or (lineno, line)
        out.extend(find_recordings([str(listed)], allow_pipes, _from_list=True))
    # A text file none of whose lines names a file is not a list (a transcript, notes): one error, not
    # "not found" per line.
    if first is not None and all(r.error == "not found" for r in out):
        raise MtlserError(f"{path}: not a list of audio paths: none of its lines names an existing file or folder "
                          f"(line {first[0]}: {first[1][:60]!r}); give audio files, folders, a wav.scp, or a "
                          "text file with one path a line (relative to the file)")
    return out


def find_recordings(inputs: list[str], allow_pipes: bool = False, _from_list: bool = False) -> list[Recording]:
    """The recordings behind command-line inputs (see the module doc), in the order given; a wav.scp's pipe
    entries are refused unless ``allow_pipes`` (:func:`read_scp`).

    An input that does not exist becomes a Recording with an error (reported per input, the rest still
    labelled); a file that is not readable text where a list is expected is an error of the whole call.
    """
    out: list[Recording] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out.extend(_folder(path, item))
        elif not path.exists():
            out.append(Recording(item, item, error="not found"))
        elif is_audio_file(path):
            out.append(Recording(item, item))
        elif path.name == "wav.scp" or path.suffix == ".scp":
            out.extend(read_scp(path, allow_pipes))
        elif _from_list:
            out.append(Recording(item, item, error="not an audio file (by its extension) inside a list file"))
        else:
            try:
                out.extend(_list_file(path, allow_pipes))
            except UnicodeDecodeError:
                raise MtlserError(f"{path}: neither audio (by its extension: {' '.join(AUDIO_EXTENSIONS)}) nor a "
                                  "text list of paths") from None
    return out


def probe(rec: Recording, sample_rate: int) -> tuple[float, int]:
    """(duration in seconds, native sample rate) of a recording, from its header (pipes: by reading them)."""
    import soundfile as sf

    if rec.is_pipe:
        from mtlser.data.dataset import read_audio

        return len(read_audio(rec.source, sample_rate)) / sample_rate, sample_rate
    try:
        info = sf.info(rec.source)
    except Exception as e:  # soundfile raises its own error types, and RuntimeError for unknown formats
        raise MtlserError(f"cannot read audio ({_short(e)})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise MtlserError("no audio samples in the file")
    return info.frames / info.samplerate, int(info.samplerate)


def load(rec: Recording, sample_rate: int, start: float = 0.0, end: float | None = None,
         native_rate: int | None = None) -> np.ndarray:
    """Mono float32 samples at ``sample_rate`` of ``[start, end)`` seconds of a recording (None: to its end)."""
    import soundfile as sf

    if rec.is_pipe:
        from mtlser.data.dataset import read_audio

        wav = read_audio(rec.source, sample_rate)  # Kaldi pipes are converted to the model's rate at stage 2
        a = int(round(start * sample_rate))
        wav = wav[a: None if end is None else int(round(end * sample_rate))]
        if not np.isfinite(wav).all():
            raise MtlserError("audio holds NaN or infinite samples")
        return wav
    rate = native_rate or int(sf.info(rec.source).samplerate)
    a = int(round(start * rate))
    b = None if end is None else int(round(end * rate))
    try:
        data, rate = sf.read(rec.source, start=a, stop=b, dtype="float32", always_2d=True)
    except Exception as e:
        raise MtlserError(f"cannot read audio ({_short(e)})") from None
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != sample_rate:
        import torch
        import torchaudio.functional as AF

        wav = AF.resample(torch.from_numpy(np.ascontiguousarray(wav)), rate, sample_rate).numpy()
    if not np.isfinite(wav).all():  # checked once here, where audio is first read: a NaN sample is no label
        raise MtlserError("audio holds NaN or infinite samples")
    return np.ascontiguousarray(wav, dtype=np.float32)


def windows(duration: float, window: float, hop: float) -> list[tuple[float, float]]:
    """[start, end) seconds of the windows a recording is labelled in.

    A recording no longer than ``window`` (or ``window`` 0) is one piece. A longer one gets windows of
    ``window`` seconds starting every ``hop`` seconds, the last one ending at the recording's end (so it
    may overlap its predecessor more than the others do); every sample is in at least one window.
    """
    if window <= 0 or duration <= window:
        return [(0.0, duration)]
    assert 0 < hop <= window, f"hop must be in (0, window], got hop {hop} for window {window}"
    out = []
    i = 0
    while i * hop + window < duration:
        out.append((i * hop, i * hop + window))
        i += 1
    out.append((duration - window, duration))
    return out


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__
