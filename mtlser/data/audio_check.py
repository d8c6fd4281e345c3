"""Stage 2's audio check: every file of wav.scp is complete and as long as utt2dur says.

A wav copied while it was still being written, or cut by a full disk, keeps a
header that promises more samples than the file holds; libsndfile then quietly
reads what is there, so the utterance trains and is scored as a fragment. This
check reads each file's header (and, for compressed formats, seeks to its last
samples) without decoding the audio:

- WAV (RIFF/RIFX): the ``data`` chunk's declared size against the bytes present;
  streaming headers whose size was never filled in (0, 0xFFFFFFFF, ~2 GiB placeholders)
  state nothing and are not judged;
- other formats (FLAC, OGG, ...): the last samples the header announces can be read;
- float WAV/other float files: every sample is finite (NaN or inf would become a NaN loss or label);
- with utt2dur: the file holds at least its utt2dur (to :data:`DURATION_TOLERANCE`).

Kaldi pipes (``cmd |``) are not run here. Problems are collected and reported
together, one line, naming wav.scp's file and line of the first few.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

from mtlser.data.datadir import DataDir
from mtlser.utils import MtlserError

logger = logging.getLogger(__name__)

#: A file may be this much shorter than its utt2dur (seconds): utt2dur is rounded, often to 10 ms.
DURATION_TOLERANCE = 0.01
#: Declared data sizes that streaming writers leave when they cannot seek back to fill in the real one.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
_PLACEHOLDER_MIN = 0x7FFF0000


def wav_data_shortfall(path: str) -> int | None:
    """Bytes a WAV file's ``data`` chunk declares but does not have (0 when complete); None when the file is
    not RIFF/RIFX WAV or its header states no size."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX"):
            return None
        endian = "<" if head[:4] == b"RIFF" else ">"
        f.seek(0, 2)
        size = f.tell()
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack(endian + "4sI", f.read(8))
            if chunk_id == b"data":
                if chunk_size in _UNKNOWN_SIZES or chunk_size >= _PLACEHOLDER_MIN:
                    return None
                return max(0, pos + 8 + chunk_size - size)
            pos += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to even sizes
        return None  # no data chunk found: libsndfile's read reports that


def check_file(path: str) -> tuple[float, str | None]:
    """(duration in s, problem or None) of one audio file, from its header and end."""
    try:
        info = sf.info(path)
    except Exception as e:
        return 0.0, f"cannot read its header ({str(e).splitlines()[0][:150]})"
    if info.format in ("WAV", "WAVEX", "RF64"):
        short = wav_data_shortfall(path)
        if short:
            declared = info.frames + short // max(1, info.channels * _sample_bytes(info.subtype))
            return info.duration, (f"truncated: its header declares {declared / info.samplerate:.3f} s, the file "
                                   f"holds {info.duration:.3f} s")
    elif info.frames > 0:
        try:
            with sf.SoundFile(path) as f:
                f.seek(max(0, info.frames - 64))
                got = len(f.read(64))
            if got < min(64, info.frames):
                raise RuntimeError(f"read {got} samples")
        except Exception as e:
            return info.duration, (f"truncated or corrupt: its header declares {info.duration:.3f} s but the end "
                                   f"cannot be read ({str(e).splitlines()[0][:100]})")
    if info.subtype in ("FLOAT", "DOUBLE"):  # only float samples can hold NaN/inf; integer PCM cannot
        try:
            for block in sf.blocks(path, blocksize=1 << 16, dtype="float64"):
                if not np.isfinite(block).all():
                    return info.duration, ("holds NaN or infinite samples (a broken float conversion): it would "
                                           "train as a non-finite loss and decode as a meaningless label")
        except Exception as e:
            return info.duration, f"cannot read its samples ({str(e).splitlines()[0][:150]})"
    return info.duration, None


def _sample_bytes(subtype: str) -> int:
    for bits, n in (("8", 1), ("16", 2), ("24", 3), ("32", 4), ("64", 8), ("FLOAT", 4), ("DOUBLE", 8)):
        if subtype.endswith(bits) or subtype == bits:
            return n
    return 2


def check_audio(dd: DataDir, path: Path) -> None:
    """Raise MtlserError naming wav.scp's lines whose audio is unreadable, truncated, or shorter than utt2dur."""
    utt2dur = dd.tables.get("utt2dur", {})
    problems = []
    for lineno, (utt, rx) in enumerate(dd["wav.scp"].items(), 1):
        if rx.endswith("|"):
            continue
        duration, problem = check_file(rx)
        if problem is None and utt in utt2dur and duration < float(utt2dur[utt]) - DURATION_TOLERANCE:
            problem = (f"shorter than its utt2dur: the file holds {duration:.3f} s, utt2dur says {utt2dur[utt]} s "
                       "(truncated, or utt2dur is wrong)")
        if problem:
            problems.append(f"{path / 'wav.scp'}:{lineno}: '{utt}' {rx}: {problem}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise MtlserError(f"{len(problems)} audio files are incomplete or unusable: " + "; ".join(problems[:3]) + more
                          + "; restore them from the corpus, or drop those utterances in local/data.sh")
    logger.info("%s: %d audio files complete%s", path / "wav.scp", len(dd["wav.scp"]),
                " and as long as utt2dur says" if utt2dur else "")
