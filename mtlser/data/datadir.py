"""The Kaldi data-directory contract between stages.

A data dir is a folder of line-oriented maps keyed by utterance id::

    wav.scp      utt  /abs/path/to/audio.wav        (required)
    text         utt  words of the transcript      (required; may be empty)
    utt2spk      utt  speaker                       (required; primary)
    spk2utt      spk  utt1 utt2 ...                 (derived from utt2spk)
    utt2emo      utt  emotion label                 (required; a label of ``emotions``, or ``-``:
                 no class, kept for its attributes; mtlser.data.emotions.NO_CLASS)
    utt2dur      utt  seconds                       (optional)
    utt2set      utt  train|dev|test|test<name>     (optional: the corpus's own sets, for the fixed
                 protocol; mtlser.data.fixed_split)
    text_<set>   utt  CTC targets: text_phncls, text_phn, text_norm, ... (optional, stage 1
                 output, see mtlser.text.tokenize; may be empty)
    emotions     the emotion inventory: one label a line, in class-index order (required;
                 mtlser.data.emotions; empty for a corpus with attributes and no classes, whose
                 utt2emo is all ``-``). Not a per-utterance file.
    utt2attr     utt  v1 v2 ...                     (optional; dimensional attributes, floats in the
                 order of ``attributes``, mtlser.data.attributes)
    attributes   the attribute declaration: '<name> <min> <max>' a line (with utt2attr). Not a
                 per-utterance file.

Every file is sorted by its first field in the C locale (byte order) and has
unique keys; all per-utterance files hold the same key set. Utterance ids are
safe file names (letters, digits, '_', '-', '.', not starting with '.' or '-';
mtlser.utils.fileio.path_in), since stages name files after them; a value of a
one-value file (utt2spk, utt2emo, utt2dur, ...) is one field.

A ``wav.scp`` entry ending in ``|`` is a Kaldi pipe: a shell command that is run
to read the audio. A data dir is therefore as trusted as a script: run only data
dirs whose wav.scp you have read or made yourself. As in Kaldi,
``utt2spk`` is primary and ``spk2utt`` is derived. As in Kaldi
(``utils/validate_data_dir.sh`` without ``--no-spk-sort``), utt2spk sorted on
the speaker (then the utterance) must give the same order as utt2spk sorted on
the utterance: Kaldi's tools that split or combine by speaker rely on it. The
corpus preps get it by making the speaker id a prefix of the utterance id,
``<speaker>-<clip name>`` (``Ses01M-Ses01F_impro01_M003``, see
mtlser.corpora.prep.kaldi_utt_id; the clip name stays in ``utt2origid``).

The other rules of Kaldi's validator that apply to a data dir without features
are checked too: ``text`` is valid UTF-8 with no non-printable characters (no
carriage returns) and none of the symbols ``<s> </s> #0`` that Kaldi's language
models reserve; ``spk2gender``, when present, is sorted, lists exactly the
speakers of utt2spk, each ``m`` or ``f``.

The ``emotions`` file travels with the data dir: :class:`DataDir` loads it,
keeps it in subsets and writes it, so stage 2's fold dirs carry the inventory
of ``data/all``.

Usage:
    python -m mtlser.data.datadir validate data/all [--no-audio-check]
    python -m mtlser.data.datadir fix data/all       # keep utterances present in every file
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping

from mtlser.data.tables import DataDirError, read_table, sort_key, write_table  # noqa: F401 (this module's API)
from mtlser.data.attributes import ATTRIBUTES, UTT2ATTR, Attribute, has_attributes, read_declaration, write_declaration
from mtlser.data.attributes import validate as validate_attributes
from mtlser.data.emotions import INVENTORY, NO_CLASS, read_inventory, write_inventory
from mtlser.utils import run_main, setup_logging
from mtlser.utils.fileio import SAFE_NAME_CHARS, atomic_dir, is_safe_name

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("wav.scp", "text", "utt2spk", "utt2emo")
#: Per-utterance files whose value may be empty (a transcript of only non-verbal tags).
EMPTY_VALUE_OK_PREFIX = "text"


def check_sorted(path: str | os.PathLike, keys: Iterable[str]) -> None:
    prev = None
    for i, key in enumerate(keys, 1):
        if prev is not None and sort_key(key) < sort_key(prev):
            raise DataDirError(
                f"{path}:{i}: '{key}' comes after '{prev}' but sorts before it in the C locale; "
                f"sort the file (LC_ALL=C sort) or run: python -m mtlser.data.datadir fix {Path(path).parent}"
            )
        prev = key


def spk2utt_from_utt2spk(utt2spk: Mapping[str, str]) -> dict[str, str]:
    groups: dict[str, list[str]] = defaultdict(list)
    for utt in sorted(utt2spk, key=sort_key):
        groups[utt2spk[utt]].append(utt)
    return {spk: " ".join(utts) for spk, utts in groups.items()}


def written_by_stages(name: str) -> bool:
    """Whether a file of a data dir is one that the stages write there (the Kaldi tables, spk2utt, spk2gender,
    the ``emotions`` inventory, the ``attributes`` declaration, ``utt2*``, stage 1's ``text_*``): how a data dir
    written before mtlser listed its files (``.mtlser-written``) is told apart from one holding a user's files."""
    return (name in REQUIRED_FILES or name in ("spk2utt", "spk2gender", INVENTORY, ATTRIBUTES)
            or name.startswith(("utt2", "text_")))


def per_utt_files(path: Path) -> list[str]:
    """The per-utterance files present in a data dir (spk2utt excluded)."""
    names = []
    for p in sorted(path.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.name in REQUIRED_FILES or p.name == "utt2dur" or p.name.startswith("text_") or p.name.startswith("utt2"):
            names.append(p.name)
    return names


class DataDir:
    """An in-memory data dir: ``tables[name][utt] = value`` for per-utterance files, and its emotion
    inventory (``emotions``, None when the dir has none) and attribute declaration (``attributes``,
    None when it has none)."""

    def __init__(self, tables: Mapping[str, Mapping[str, str]], path: Path | None = None,
                 emotions: Iterable[str] | None = None, attributes: Iterable[Attribute] | None = None):
        self.tables: dict[str, dict[str, str]] = {k: dict(v) for k, v in tables.items()}
        self.path = path
        self.emotions: list[str] | None = list(emotions) if emotions is not None else None
        self.attributes: list[Attribute] | None = list(attributes) if attributes is not None else None

    @classmethod
    def load(cls, path: str | os.PathLike, names: Iterable[str] | None = None) -> "DataDir":
        path = Path(path)
        if not path.is_dir():
            raise DataDirError(f"{path}: not a data directory (missing); run the stage that writes it first")
        names = list(names) if names is not None else per_utt_files(path)
        tables = {}
        for name in names:
            tables[name] = read_table(path / name, allow_empty_value=name.startswith(EMPTY_VALUE_OK_PREFIX))
        emotions = read_inventory(path) if (path / INVENTORY).is_file() else None
        attributes = read_declaration(path) if has_attributes(path) else None
        return cls(tables, path, emotions, attributes)

    @property
    def utts(self) -> list[str]:
        return sorted(self.tables["utt2spk"], key=sort_key)

    def __len__(self) -> int:
        return len(self.tables["utt2spk"])

    def __getitem__(self, name: str) -> dict[str, str]:
        return self.tables[name]

    def subset(self, utts: Iterable[str]) -> "DataDir":
        keep = set(utts)
        return DataDir({name: {u: v for u, v in t.items() if u in keep} for name, t in self.tables.items()},
                       emotions=self.emotions, attributes=self.attributes)

    def write(self, path: str | os.PathLike) -> None:
        """Write all tables and the derived spk2utt; the dir appears complete or not at all."""
        with atomic_dir(path, older_ours=written_by_stages) as tmp:
            for name, table in self.tables.items():
                write_table(tmp / name, table)
            if "utt2spk" in self.tables:
                write_table(tmp / "spk2utt", spk2utt_from_utt2spk(self.tables["utt2spk"]))
            if self.emotions is not None:
                write_inventory(tmp, self.emotions)
            if self.attributes is not None:
                write_declaration(tmp, self.attributes)
        self.path = Path(path)


def validate_data_dir(path: str | os.PathLike, *, check_audio: bool = True) -> DataDir:
    """Check the contract; return the loaded dir or raise DataDirError listing what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise DataDirError(f"{path}: no such data directory")
    missing = [n for n in REQUIRED_FILES if not (path / n).is_file()]
    if missing:
        raise DataDirError(f"{path}: missing {', '.join(missing)} (a data dir needs {', '.join(REQUIRED_FILES)})")
    check_text(path)  # before reading it as text: a '\r' would read as a line end, bad UTF-8 as an exception
    names = per_utt_files(path)
    dd = DataDir.load(path, names)
    for name in names:
        check_sorted(path / name, dd.tables[name].keys())

    ref = set(dd.tables["utt2spk"])
    for name in names:
        keys = set(dd.tables[name])
        if keys != ref:
            extra = sorted(keys - ref)[:3]
            lack = sorted(ref - keys)[:3]
            raise DataDirError(
                f"{path / name}: key set differs from utt2spk "
                f"({len(keys - ref)} extra, e.g. {extra}; {len(ref - keys)} missing, e.g. {lack}); "
                f"run: python -m mtlser.data.datadir fix {path}"
            )
    if not ref:
        raise DataDirError(f"{path}: no utterances")
    check_ids_and_fields(path, dd)

    check_speaker_order(path, dd.tables["utt2spk"])
    check_spk2gender(path, dd.tables["utt2spk"])

    if (path / "spk2utt").is_file():
        spk2utt = read_table(path / "spk2utt")
        check_sorted(path / "spk2utt", spk2utt.keys())
        if spk2utt != spk2utt_from_utt2spk(dd.tables["utt2spk"]):
            raise DataDirError(f"{path / 'spk2utt'}: does not match utt2spk; run: python -m mtlser.data.datadir fix {path}")

    validate_attributes(path, dd.tables.get(UTT2ATTR), list(dd.tables["utt2spk"]))

    if dd.emotions is None:
        read_inventory(path)  # raises: the message says what the file holds and who writes it
    if not dd.emotions and UTT2ATTR not in dd.tables:
        raise DataDirError(f"{path / INVENTORY}: empty (no classes) and no {UTT2ATTR}: a data dir needs classes, "
                           "attributes or both; write the inventory (python -m mtlser.data.set_emotions) or utt2attr")
    allowed = set(dd.emotions)
    for lineno, (utt, emo) in enumerate(dd.tables["utt2emo"].items(), 1):
        if emo not in allowed and emo != NO_CLASS:
            raise DataDirError(
                f"{path / 'utt2emo'}:{lineno}: utterance '{utt}' has label '{emo}', which is not in the emotion "
                f"inventory {path / INVENTORY} ({' '.join(dd.emotions)}); add it there (its line is its class "
                f"index) or map or drop it in local/data.sh"
            )
    unused = [e for e in dd.emotions if e not in set(dd.tables["utt2emo"].values())]
    if unused:
        logger.warning("%s: emotion(s) %s of the inventory have no utterance in utt2emo", path, " ".join(unused))

    for lineno, (utt, rxfile) in enumerate(dd.tables["wav.scp"].items(), 1):
        if rxfile.endswith("|"):
            continue  # a Kaldi pipe: nothing to stat until it runs
        if not os.path.isabs(rxfile):
            raise DataDirError(f"{path / 'wav.scp'}:{lineno}: '{rxfile}' is not an absolute path")
        if check_audio and not os.path.isfile(rxfile):
            raise DataDirError(
                f"{path / 'wav.scp'}:{lineno}: audio for '{utt}' not found: {rxfile} "
                f"(fix the path, or drop the utterance in local/data.sh)"
            )

    if "utt2dur" in dd.tables:
        for lineno, (utt, dur) in enumerate(dd.tables["utt2dur"].items(), 1):
            try:
                ok = float(dur) > 0 and math.isfinite(float(dur))
            except ValueError:
                ok = False
            if not ok:
                raise DataDirError(f"{path / 'utt2dur'}:{lineno}: '{utt}' has duration '{dur}'; expected seconds > 0")
    return dd


#: Per-utterance files whose value is a single field (the speaker, the label, the duration, ...).
def _one_value(name: str) -> bool:
    return name.startswith("utt2") and name != UTT2ATTR


def check_ids_and_fields(path: Path, dd: DataDir) -> None:
    """Utterance ids are safe file names; one-value files have one value per line.

    An id written with a space (``my utt ang`` in utt2emo) splits into a key and a value of two fields,
    so the second check names that case instead of reporting a bad label.
    """
    for lineno, utt in enumerate(dd.tables["utt2spk"], 1):
        if not is_safe_name(utt):
            raise DataDirError(f"{path / 'utt2spk'}:{lineno}: utterance id '{utt}' is not a safe file name; ids may "
                               f"use only {SAFE_NAME_CHARS} (at most 200 bytes): rename it in local/data.sh")
    for name, table in dd.tables.items():
        if not _one_value(name):
            continue
        for lineno, (utt, value) in enumerate(table.items(), 1):
            if len(value.split()) > 1:
                raise DataDirError(
                    f"{path / name}:{lineno}: '{utt} {value}' has {1 + len(value.split())} fields; a line is "
                    f"'utterance value' with no spaces inside either (an utterance id with a space? ids may use only "
                    f"{SAFE_NAME_CHARS})")


#: Symbols Kaldi's LM tools reserve; validate_data_dir.sh refuses them as words of ``text``.
RESERVED_WORDS = ("<s>", "</s>", "#0")


def check_speaker_order(path: Path | None, utt2spk: Mapping[str, str]) -> None:
    """utt2spk in utterance order is also in (speaker, utterance) order: Kaldi's speaker-sort rule."""
    by_utt = sorted(utt2spk, key=sort_key)
    by_spk = sorted(utt2spk, key=lambda u: (sort_key(utt2spk[u]), sort_key(u)))
    for lineno, (a, b) in enumerate(zip(by_utt, by_spk), 1):
        if a != b:
            raise DataDirError(
                f"{Path(path or '.') / 'utt2spk'}:{lineno}: '{a} {utt2spk[a]}' is not in speaker order (sorted on "
                f"the speaker, "
                f"line {lineno} is '{b} {utt2spk[b]}'); Kaldi's tools need both orders to agree: make each "
                f"speaker id a prefix of its utterance ids, '<speaker>-<name>' (e.g. {utt2spk[a]}-{a}), "
                f"in local/data.sh")


def check_text(path: Path) -> None:
    """``text`` as Kaldi's validator wants it: UTF-8, printable, no reserved LM symbols."""
    raw = (path / "text").read_bytes()
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError:
            raise DataDirError(f"{path / 'text'}:{lineno}: not valid UTF-8; re-encode the transcripts "
                               "(e.g. iconv -t UTF-8) in local/data.sh") from None
        bad = next((c for c in decoded if not c.isprintable() and c not in " \t"), None)
        if bad is not None:
            raise DataDirError(f"{path / 'text'}:{lineno}: non-printable character {bad!r} (a carriage return from "
                               "a Windows file?); strip it in local/data.sh")
        reserved = [w for w in decoded.split()[1:] if w in RESERVED_WORDS]
        if reserved:
            raise DataDirError(f"{path / 'text'}:{lineno}: the word '{reserved[0]}' is reserved by Kaldi's language "
                               f"models ({' '.join(RESERVED_WORDS)}); remove or rename it in local/data.sh")


def check_spk2gender(path: Path, utt2spk: Mapping[str, str]) -> None:
    """spk2gender, when present: sorted, unique, the speakers of utt2spk, each m or f."""
    if not (path / "spk2gender").is_file():
        return
    table = read_table(path / "spk2gender")
    check_sorted(path / "spk2gender", table.keys())
    for lineno, (spk, gender) in enumerate(table.items(), 1):
        if gender not in ("m", "f"):
            raise DataDirError(f"{path / 'spk2gender'}:{lineno}: speaker '{spk}' has '{gender}'; a line is "
                               "'speaker m' or 'speaker f' (leave the file out when a speaker's is unknown)")
    speakers = set(utt2spk.values())
    if set(table) != speakers:
        extra, lack = sorted(set(table) - speakers)[:3], sorted(speakers - set(table))[:3]
        raise DataDirError(f"{path / 'spk2gender'}: its speakers differ from utt2spk's (extra {extra}, missing "
                           f"{lack}); list exactly the speakers of utt2spk, or leave the file out")


def fix_data_dir(path: str | os.PathLike) -> tuple[int, int]:
    """Keep utterances present in every per-utterance file, sort, rebuild spk2utt.

    Returns (kept, total) where total counts utterances in utt2spk; logs "kept N of M".
    """
    path = Path(path)
    names = per_utt_files(path)
    tables = {}
    for name in names:
        tables[name] = read_table(path / name, allow_empty_value=name.startswith(EMPTY_VALUE_OK_PREFIX))
    total = len(tables.get("utt2spk", {}))
    common = set.intersection(*(set(t) for t in tables.values())) if tables else set()
    emotions = read_inventory(path) if (path / INVENTORY).is_file() else None
    attributes = read_declaration(path) if has_attributes(path) else None
    dd = DataDir({n: {u: v for u, v in t.items() if u in common} for n, t in tables.items()}, emotions=emotions,
                 attributes=attributes)
    dd.write(path)
    logger.info("fix_data_dir %s: kept %d of %d utterances", path, len(common), total)
    return len(common), total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Validate or fix a Kaldi-style data dir.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("validate", help="check the contract; exit 1 with the problem if broken")
    p.add_argument("data_dir")
    p.add_argument("--no-audio-check", action="store_true", help="do not check that audio files exist")
    p = sub.add_parser("fix", help="keep utterances present in every file, sort, rebuild spk2utt")
    p.add_argument("data_dir")
    args = parser.parse_args(argv)
    setup_logging()
    if args.cmd == "validate":
        dd = validate_data_dir(args.data_dir, check_audio=not args.no_audio_check)
        logger.info("%s: OK (%d utterances, %d speakers)", args.data_dir, len(dd), len(set(dd["utt2spk"].values())))
    else:
        fix_data_dir(args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
