"""Stage 0 for every described corpus: one ``prepare`` over a corpus's description.

A corpus module (:mod:`mtlser.corpora.iemocap`, ``crema_d``, ``ravdess``) declares a
:class:`Corpus`: its name, the raw labels a label map may keep and merge, a ``scan``
that reads the release's layout into :class:`Utterance` s, and its release totals.
What is the same for every corpus is here, once: the label map (load, check, apply),
audio that is missing or unreadable, durations and sample rates, the data dir with its
emotion inventory (and spk2gender, and for a corpus with dimensional labels the attributes
``utt2attr`` with their declaration ``attributes``) written in one piece and validated, the report
(REPORT_DIR/counts.json and the list of what was left out), the summary on the log,
and the loud warning when a copy does not give the release's counts.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pkgutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import soundfile as sf

from mtlser.data.attributes import UTT2ATTR, Attribute, write_declaration
from mtlser.data.datadir import sort_key, spk2utt_from_utt2spk, validate_data_dir, write_table, written_by_stages
from mtlser.data.emotions import NO_CLASS, EmotionMap, check_labels, load_emotion_map, write_inventory
from mtlser.utils import MtlserError
from mtlser.utils.fileio import atomic_dir, atomic_write_text, check_output

logger = logging.getLogger(__name__)

#: Where the recipes' label maps are: conf/emotions/<corpus module>.yaml is a corpus's default.
EMOTION_MAPS = Path(__file__).resolve().parents[2] / "conf" / "emotions"
#: The per-utterance files every prep writes (spk2utt is derived; a corpus may add more, e.g. utt2session).
TABLES = ("wav.scp", "text", "utt2spk", "utt2emo", "utt2dur", "utt2origid")
#: utt -> the corpus's own clip name (IEMOCAP's turn name), for partitions, reports and names a user knows.
ORIGID = "utt2origid"

_LFS_POINTER = b"version https://git-lfs"


@dataclass
class Utterance:
    """One utterance a scan found, before the label map: its id, audio, transcript, speaker, raw label."""
    utt: str
    wav: Path
    text: str | None  # None: the release has no transcript for it (kept, trains without the CTC term)
    speaker: str
    label: str  # a raw label, one of Corpus.labels
    where: str  # for the report of a file-listing corpus: the file, relative to the root
    tables: dict[str, str] = field(default_factory=dict)  # more per-utterance files, e.g. {"utt2session": "Ses01"}
    attributes: tuple[float, ...] | None = None  # values in Corpus.attributes' order, already checked against it


@dataclass
class Found:
    """What a scan found in a copy of the release."""
    root: Path  # the folder the utterances were found in (for messages)
    utterances: list[Utterance]
    #: (reason, path) of each file under the root that is not an utterance, for a corpus whose every file is
    #: a candidate clip: the report then accounts for each file (REPORT_DIR/skipped, ``reason path``), label
    #: drops included. None for a corpus whose label files list its utterances: the report then lists the
    #: utterances left out (REPORT_DIR/dropped, ``utt reason``).
    skipped: list[tuple[str, str]] | None = None
    facts: dict = field(default_factory=dict)  # the corpus's own counts, for counts.json
    groups: list[str] | None = None  # values of Corpus.group_by, in report order (all, even without utterances)
    genders: dict[str, str] | None = None  # speaker -> m|f, when the release says
    genders_from: str = ""  # where genders came from, for messages


@dataclass(frozen=True)
class Corpus:
    """A corpus's description: what a fourth corpus declares (see mtlser/corpora/__init__.py)."""
    name: str  # as written in messages, e.g. "CREMA-D"
    labels: tuple[str, ...]  # the raw labels a label map may keep and merge
    scan: Callable[..., Found]  # scan(db_root: Path, **options) -> Found; errors name the file
    #: release_problems(report, emotion_map) -> a line per count that differs from the full release's, or None
    #: (after saying why on the log) when the release has no figure for this label map
    release_problems: Callable[[dict, EmotionMap], list[str] | None]
    db_root_help: str  # what --db-root is
    release_total: str  # e.g. "7,442 clips", for --no-check-counts's help
    items: str = "clips"  # what its utterances are called in messages
    labels_called: str = "labels"  # what its raw labels are called in messages
    group_by: str | None = None  # a per-utterance table counted per value in the report (utt2session)
    options: dict = field(default_factory=dict)  # more options of its command line: flag -> argparse kwargs
    #: its clip names begin with their speaker id already, and keep as utterance ids; else ids are
    #: <speaker>-<clip> (kaldi_utt_id), Kaldi's speaker-prefix rule
    clips_start_with_speaker: bool = False
    module: str = ""  # its module's short name: conf/emotions/<module>.yaml, data/local/<module>_prep
    #: Its dimensional labels, in utt2attr's column order (mtlser.data.attributes); () for a corpus without.
    attributes: tuple[Attribute, ...] = ()
    #: True: an utterance whose raw label the map does not keep stays, with attributes and no class
    #: (utt2emo NO_CLASS); False: it is dropped, as every utterance without a kept class.
    keep_unclassed: bool = False


def load(name: str) -> Corpus:
    """The description in ``mtlser.corpora.<name>``."""
    known = described()
    if name not in known:  # also keeps a path-like name from reaching import_module
        raise MtlserError(f"'{name}' is not a described corpus; known: {' '.join(known)} "
                          "(a corpus is a module mtlser/corpora/<name>.py that declares CORPUS)")
    return importlib.import_module(f"mtlser.corpora.{name}").CORPUS


def described() -> list[str]:
    """The modules of this package that declare a CORPUS."""
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                  if not m.name.startswith("_")
                  and isinstance(getattr(importlib.import_module(f"mtlser.corpora.{m.name}"), "CORPUS", None), Corpus))


def is_hidden(name: str) -> bool:
    """.DS_Store, the ._<name> AppleDouble copies a macOS archive leaves, and other dot files."""
    return name.startswith(".")


def relpath(path: Path, root: Path) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return str(path)


def require_code(path: Path, what: str, code: str, known, corpus: str, shown: str | None = None) -> None:
    """Refuse a clip whose file name carries a code its corpus does not define (``shown``: how to list the
    known codes, default space-separated)."""
    if code not in known:
        raise MtlserError(f"{path}: unknown {what} '{code}'; {corpus} has {shown or ' '.join(known)}. "
                          "Rename or remove the file")


def compare_counts(name: str, found: dict[str, int], expected: dict[str, int]) -> list[str]:
    """Lines naming each count that differs from the release's (missing keys count 0)."""
    keys = list(expected) + [k for k in found if k not in expected]
    return [f"{name} {k}: {found.get(k, 0)}, the release has {expected.get(k, 0)}"
            for k in keys if found.get(k, 0) != expected.get(k, 0)]


def compare_totals(report: dict, clips: int, actors: int, emotions: dict[str, int],
                   clips_name: str = "clips") -> list[str]:
    """Lines naming each of a clip corpus's totals (clips, actors, per raw emotion) that the release's differ from."""
    problems = []
    if report["clips"] != clips:
        problems.append(f"{clips_name}: {report['clips']}, the release has {clips}")
    if report["actors"] != actors:
        problems.append(f"actors: {report['actors']}, the release has {actors}")
    return problems + compare_counts("emotion", report["raw_emotions"], emotions)


def clip_duration(path: Path) -> tuple[float, int, int]:
    """(seconds, sample rate, channels) of a clip, or a clear error naming it."""
    try:
        info = sf.info(str(path))
    except Exception as e:
        with open(path, "rb") as f:
            head = f.read(len(_LFS_POINTER))
        if head == _LFS_POINTER:
            raise MtlserError(f"{path}: a Git LFS pointer, not audio: the copy was cloned without git-lfs; "
                              "run `git lfs pull` in it (or download the release's audio)") from None
        raise MtlserError(f"{path}: cannot read the audio header ({e}); is the file complete?") from None
    if info.frames <= 0:
        raise MtlserError(f"{path}: empty audio; restore the file from the release")
    return info.frames / info.samplerate, info.samplerate, info.channels


#: Between the speaker and the clip name in an utterance id. '-' sorts before every other character a safe
#: name may hold (letters, digits, '_', '.'), so ids sorted in the C locale follow their speakers' order even
#: when one speaker id is a prefix of another (spk1-..., spk10-...): Kaldi's speaker-sort rule
#: (mtlser.data.datadir.check_speaker_order). '_' would not do: 'spk1_x' sorts after 'spk10_x'.
SPEAKER_SEP = "-"


def kaldi_utt_id(speaker: str, clip: str, prefixed: bool = False) -> str:
    """The utterance id of a corpus's clip: ``<speaker>-<clip>``, or the clip name itself for a corpus whose
    clip names already begin with their speaker (``Corpus.clips_start_with_speaker``: CREMA-D's
    ``1001_DFA_ANG_XX``, RAVDESS's ``Actor_12_...``; their speaker ids all have one length, so '_' keeps
    Kaldi's order there)."""
    if prefixed:
        if not clip.startswith(speaker):
            raise MtlserError(f"clip '{clip}' does not begin with its speaker '{speaker}', as the corpus declares")
        return clip
    return f"{speaker}{SPEAKER_SEP}{clip}"


def check_map(corpus: Corpus, emotion_map: EmotionMap) -> None:
    """A label map for this corpus: it merges the corpus's raw labels, and each of its classes can get utterances."""
    raw = list(corpus.labels)
    bad_merge = sorted(set(emotion_map.merge) - set(raw))
    never = [e for e in emotion_map.emotions if e not in raw and e not in emotion_map.merge.values()]
    if bad_merge or never:
        raise MtlserError(f"{emotion_map.source}: {' '.join(bad_merge + never)} are not {corpus.name} "
                          f"{corpus.labels_called} ({' '.join(raw)}) nor merge targets; a label map for "
                          f"{corpus.name} keeps and merges those {corpus.labels_called}")


def prepare(corpus: Corpus, db_root: str | Path, out: str | Path, emotion_map: EmotionMap | str | Path | None = None,
            check_counts: bool = True, report_dir: str | Path | None = None, skip_missing_audio: bool = False,
            **options) -> dict:
    """The release at ``db_root`` -> the data dir ``out``; returns the count report (REPORT_DIR/counts.json).

    ``options`` go to the corpus's scan (e.g. IEMOCAP's ``sessions``).
    """
    if not isinstance(emotion_map, EmotionMap):
        emotion_map = load_emotion_map(emotion_map if emotion_map is not None
                                       else EMOTION_MAPS / f"{corpus.module}.yaml")
    check_map(corpus, emotion_map)
    db_root, out = Path(db_root).resolve(), Path(out)
    check_output(out, [], "--out", around=[db_root])  # the data dir may sit in the release, never replace it
    report_dir = Path(report_dir) if report_dir is not None else out.parent / "local" / f"{corpus.module}_prep"
    found = corpus.scan(db_root, **options)

    tables: dict[str, dict[str, str]] = {name: {} for name in TABLES}
    dropped: dict[str, str] = {}  # utt -> reason, for a corpus whose label files list its utterances
    skipped = list(found.skipped) if found.skipped is not None else None
    rates: Counter[tuple[int, int]] = Counter()
    missing_audio: list[str] = []
    no_transcript: list[str] = []
    nonverbal_only: list[str] = []
    unclassed = 0
    for u in found.utterances:
        label = emotion_map.apply(u.label)
        if label is None and corpus.keep_unclassed and u.attributes is not None:
            label, unclassed = NO_CLASS, unclassed + 1
        if label is None:
            if skipped is None:
                dropped[u.utt] = f"label:{u.label}"
            else:
                skipped.append((f"label:{u.label}", u.where))
            continue
        if not u.wav.is_file():
            missing_audio.append(str(u.wav))
            dropped[u.utt] = "no_audio"
            continue
        if u.text is None:
            no_transcript.append(u.utt)
        elif u.text and not _clean_transcript(u.text):
            nonverbal_only.append(u.utt)
        seconds, rate, channels = clip_duration(u.wav)
        rates[(rate, channels)] += 1
        utt = kaldi_utt_id(u.speaker, u.utt, corpus.clips_start_with_speaker)
        for name, value in (("wav.scp", str(u.wav)), ("text", u.text or ""), ("utt2spk", u.speaker),
                            ("utt2emo", label), ("utt2origid", u.utt), ("utt2dur", f"{seconds:.4f}"),
                            *u.tables.items()):
            tables.setdefault(name, {})[utt] = value
        if u.attributes is not None:
            tables.setdefault(UTT2ATTR, {})[utt] = " ".join(f"{v:g}" for v in u.attributes)

    if missing_audio:
        msg = (f"{len(missing_audio)} {corpus.items} of the {len(emotion_map.emotions)} classes have no audio, "
               f"e.g. {missing_audio[0]}")
        if not skip_missing_audio:
            raise MtlserError(msg + "; restore the files from the release, or drop them with "
                              "--skip-missing-audio (./run.sh --local-data-opts '--skip-missing-audio true')")
        logger.warning("%s: dropped (--skip-missing-audio)", msg)
    if no_transcript:
        logger.warning("%d %s have no transcript (e.g. %s); kept, they train without the CTC term",
                       len(no_transcript), corpus.items, no_transcript[0])
    if not tables["utt2spk"]:
        raise MtlserError(f"{found.root}: no {corpus.name} {corpus.items} with a label of {emotion_map.source} "
                          f"(found {len(found.utterances)} {corpus.items})")
    if UTT2ATTR in tables and len(tables[UTT2ATTR]) != len(tables["utt2spk"]):
        lack = sorted(set(tables["utt2spk"]) - set(tables[UTT2ATTR]), key=sort_key)
        raise MtlserError(f"{found.root}: {len(lack)} {corpus.items} have no attribute values, e.g. {lack[0]}; "
                          f"{corpus.name}'s prep gives every utterance its {' '.join(a.name for a in corpus.attributes)}")
    if unclassed:
        logger.info("%d %s have no class of %s (raw labels the map does not keep): kept for their attributes, "
                    "utt2emo '%s'", unclassed, corpus.items, emotion_map.source, NO_CLASS)
    spk2gender = _genders(found, set(tables["utt2spk"].values()))

    write_data_dir(out, tables, emotion_map, spk2gender, corpus.attributes if UTT2ATTR in tables else ())
    report = count_report(corpus, found, tables, emotion_map, db_root)
    left_out = "dropped" if skipped is None else "skipped"
    report[left_out] = dict(sorted(Counter(dropped.values() if skipped is None
                                           else (reason for reason, _ in skipped)).items()))
    report.update({"emotion_map": _describe(emotion_map), "no_transcript": len(no_transcript),
                   "nonverbal_only": len(nonverbal_only),
                   "sample_rates": {f"{r} Hz x{c}": n for (r, c), n in sorted(rates.items())}})
    atomic_write_text(report_dir / "counts.json", json.dumps(report, indent=1) + "\n")
    if skipped is None:
        write_table(report_dir / "dropped", dropped)
    else:
        atomic_write_text(report_dir / "skipped", "".join(f"{reason} {path}\n" for reason, path in sorted(skipped)))
    log_summary(corpus, found, report, left_out, rates)
    logger.info("wrote %s (%d utterances, %d speakers) and %s", out, report["total"], len(report["per_speaker"]),
                report_dir)
    if check_counts:
        check_release_counts(corpus, report, report_dir, emotion_map)
    return report


def _clean_transcript(text: str) -> str:
    from mtlser.text.g2p import clean_transcript  # stdlib-only at import time: cheap

    return clean_transcript(text)


def _genders(found: Found, speakers: set[str]) -> dict[str, str] | None:
    """spk2gender of the kept speakers, when the release gives every one's."""
    if found.genders is None:
        return None
    missing = sorted(speakers - set(found.genders), key=sort_key)
    if missing:
        logger.warning("%s: no sex given for speakers %s; no spk2gender written (folds will not be "
                       "gender-balanced)", found.genders_from, missing[:5])
        return None
    return {s: found.genders[s] for s in speakers}


def _describe(emotion_map: EmotionMap) -> str:
    return " ".join(emotion_map.emotions) + "".join(f", {k} merged into {v}" for k, v in emotion_map.merge.items())


def write_data_dir(out: Path, tables: dict[str, dict[str, str]], emotion_map: EmotionMap,
                   spk2gender: dict[str, str] | None = None,
                   attributes: tuple[Attribute, ...] = ()) -> None:
    """The data dir, its ``emotions`` inventory, spk2gender and the ``attributes`` declaration, appearing in one
    piece; then validated."""
    emotions = check_labels(list(emotion_map.emotions), emotion_map.source)
    with atomic_dir(out, older_ours=written_by_stages) as tmp:
        for name, table in tables.items():
            write_table(tmp / name, table)
        write_table(tmp / "spk2utt", spk2utt_from_utt2spk(tables["utt2spk"]))
        write_inventory(tmp, emotions)
        if spk2gender:
            write_table(tmp / "spk2gender", spk2gender)
        if attributes:
            write_declaration(tmp, list(attributes))
    validate_data_dir(out)  # labels against the inventory just written; warns of classes without utterances


def count_report(corpus: Corpus, found: Found, tables: dict[str, dict[str, str]], emotion_map: EmotionMap,
                 db_root: Path) -> dict:
    """Kept utterances per emotion (inventory order), per group (e.g. session) and per speaker; the corpus's facts."""
    kept = Counter(tables["utt2emo"].values())
    emotions = list(emotion_map.emotions) + ([NO_CLASS] if kept[NO_CLASS] else [])  # NO_CLASS: kept unclassed
    report: dict = {"total": len(tables["utt2emo"]), "counts": {e: kept[e] for e in emotions}}
    if corpus.group_by:
        groups = found.groups if found.groups is not None else sorted(set(tables[corpus.group_by].values()))
        per_group = {g: {e: 0 for e in emotions} for g in groups}
        for utt, emo in tables["utt2emo"].items():
            per_group[tables[corpus.group_by][utt]][emo] += 1
        report["per_" + corpus.group_by.removeprefix("utt2")] = per_group
    per_speaker: dict[str, dict[str, int]] = {}
    for utt, emo in tables["utt2emo"].items():
        per_speaker.setdefault(tables["utt2spk"][utt], {e: 0 for e in emotions})[emo] += 1
    report["per_speaker"] = {k: per_speaker[k] for k in sorted(per_speaker, key=sort_key)}
    report["db_root"] = str(db_root)
    report.update(found.facts)
    return report


def log_summary(corpus: Corpus, found: Found, report: dict, left_out: str, rates: Counter) -> None:
    """A table on the log: kept utterances per group and class, raw labels, what was left out, speakers."""
    emotions = list(report["counts"])
    lines = [f"utterances kept ({report['emotion_map']}):",
             f"{'':8s}" + "".join(f"{e:>7s}" for e in emotions) + f"{'total':>8s}"]
    if corpus.group_by:
        for group, c in report["per_" + corpus.group_by.removeprefix("utt2")].items():
            lines.append(f"{group:8s}" + "".join(f"{c[e]:7d}" for e in emotions) + f"{sum(c.values()):8d}")
    lines.append(f"{'all':8s}" + "".join(f"{report['counts'][e]:7d}" for e in emotions) + f"{report['total']:8d}")
    raw = Counter(u.label for u in found.utterances)
    lines.append(f"{corpus.items} found: {len(found.utterances)}; raw labels: "
                 + " ".join(f"{k}={raw[k]}" for k in corpus.labels if raw[k]))
    lines.append(f"{left_out}: " + (" ".join(f"{k}={v}" for k, v in report[left_out].items()) or "none"))
    lines.append(f"speakers: {len(report['per_speaker'])} ({' '.join(report['per_speaker'])})")
    if report["nonverbal_only"]:
        lines.append(f"kept {report['nonverbal_only']} {corpus.items} whose transcript is only non-verbal tags "
                     "([LAUGHTER] ...): emotion label, no phones")
    for line in lines:
        logger.info("%s", line)
    not_16k = sum(n for (r, c), n in rates.items() if (r, c) != (16000, 1))
    if not_16k:
        logger.info("%d %s are not 16 kHz mono (%s); stage 2 converts them once into data/wav16k", not_16k,
                    corpus.items, ", ".join(report["sample_rates"]))


def check_release_counts(corpus: Corpus, report: dict, report_dir: Path,
                         emotion_map: EmotionMap | None = None) -> bool:
    """Compare the report with the full release; a loud warning names each count that differs.

    True when they agree, or when the release has no figure for this label map (the corpus says why).
    """
    if emotion_map is None:
        emotion_map = load_emotion_map(EMOTION_MAPS / f"{corpus.module}.yaml")
    problems = corpus.release_problems(report, emotion_map)
    if problems is None:
        return True
    if not problems:
        logger.info("counts match the full %s release", corpus.name)
        return True
    banner = "!" * 78
    shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
    listed = "dropped" if "dropped" in report else "skipped"
    logger.warning(
        "\n%s\nThis %s copy does not give the counts of the full release:\n  %s\n"
        "Results will not be comparable with published ones. Check the copy (missing, edited or extra files?);\n"
        "%s/counts.json and %s list what was found.\n%s",
        banner, corpus.name, "\n  ".join(shown), report_dir, listed, banner,
    )
    return False
