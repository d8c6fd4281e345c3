"""Stage 2: audio to 16 kHz mono once, then one Kaldi data dir per fold.

Protocols:
  loso          10 folds on IEMOCAP: each speaker is the test set once (the paper).
  loso-session  5 folds: each session is the test set once (needs ``utt2session``).
  kfold<K>      K folds of whole speakers, e.g. kfold5 (see mtlser.data.speaker_folds).
  partition     the test folds (and their training sides) of published partition
                files, --partition DIR (see mtlser.data.partition).
  fixed         the corpus's own sets (``utt2set``: train, dev, test, test<name>) as one
                fold whose valid set is the development set (see mtlser.data.fixed_split).
  cross-corpus  one fold of a combined data dir (mtlser.data.combine, its utt2corpus):
                test on the whole --test-corpus, train and select (valid) on
                --train-corpora (default: every other corpus of the dir).

Model selection never sees the test speaker (with a partition: the fold's test
utterances; whether speakers overlap is the partition's design). The valid set
comes from the training side only:
  share         a fixed share of each training speaker's utterances, stratified by
                emotion (default; every training speaker stays in training)
  session-mate  the other speaker of the test speaker's session (loso only; the
                remaining 8 speakers train)
  none          no valid set (the paper's protocol: every training-side utterance
                trains and the last epoch's model is reported; train.model_selection last)
With the fixed protocol the valid set is the corpus's development set (--valid share, the
default, stands for it; the other choices are refused).

Writes ``OUT/foldNN/{train,valid,test}/`` (full data dirs: every per-utterance
file of the source, spk2utt rebuilt, its emotion inventory ``emotions`` and, when
it has one, its attribute declaration ``attributes``; no
``valid/`` with --valid none) and ``OUT/folds.tsv`` describing the folds, and
``OUT/final/train/``: every utterance of every speaker, the training data of the
final model that is trained once after cross-validation (:mod:`mtlser.train.final`).
Each data dir is written atomically; the whole stage is deterministic in --seed.

Usage:
    python -m mtlser.data.split --data-dir data/all --out data/loso \\
        [--protocol loso] [--valid share|session-mate|none] [--valid-share 0.1] [--seed 0] \\
        [--audio-dir data/wav16k]
    python -m mtlser.data.split --data-dir data/all --out data/partition --protocol partition \\
        --partition /path/to/EmoBox/data/cremad
    python -m mtlser.data.split --data-dir data/combined --out data/cross --protocol cross-corpus \\
        --train-corpora "crema_d ravdess" --test-corpus mini
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

from mtlser.data.audio_check import check_audio
from mtlser.data.combine import UTT2CORPUS
from mtlser.data.datadir import DataDir, sort_key, validate_data_dir, write_table
from mtlser.data.fixed_split import PROTOCOL as FIXED
from mtlser.data.fixed_split import UTT2SET, fixed_sets, read_utt2set
from mtlser.data.fold_names import FINAL, PROTOCOL_TABLE, TEST_SET, fold_name
from mtlser.data.partition import partition_folds
from mtlser.data.speaker_folds import kfold_k, speaker_kfold
from mtlser.utils import MtlserError, run_main, setup_logging
from mtlser.utils.fileio import atomic_write_text, check_output, file_identity, path_in, remove_written_dir

logger = logging.getLogger(__name__)


#: Bump when the conversion's output changes (mixing, resampler, sample format): old copies are then redone.
CONVERSION_VERSION = 1


def normalize_audio(dd: DataDir, audio_dir: Path, sample_rate: int = 16000) -> int:
    """Rewrite wav.scp entries that are not ``sample_rate`` mono to converted copies in ``audio_dir``.

    A copy ``<utt>.wav`` is reused only while its source is unchanged: ``<utt>.wav.src`` records the source's
    identity (path, size, mtime: mtlser.utils.fileio.file_identity) and the conversion settings, and is written
    after the copy is complete, so a changed source, other settings or a killed conversion are redone (and
    logged). Returns how many entries point to copies.
    """
    import torch
    import torchaudio.functional as AF

    converted, redone = 0, []
    for utt, path in list(dd["wav.scp"].items()):
        if path.endswith("|"):
            continue
        try:
            info = sf.info(path)
        except Exception as e:
            raise MtlserError(f"{path}: cannot read audio header for '{utt}' ({e})") from None
        if info.samplerate == sample_rate and info.channels == 1:
            continue
        out = path_in(audio_dir, utt, ".wav")
        key_file = out.with_name(out.name + ".src")
        key = f"{file_identity(path)} rate={sample_rate} mono v{CONVERSION_VERSION}\n"
        recorded = key_file.read_text(encoding="utf-8") if key_file.is_file() else None
        if not (out.is_file() and recorded == key):
            if out.is_file():
                redone.append(utt)
            key_file.unlink(missing_ok=True)  # no record vouches for a copy while it is rewritten
            data, rate = sf.read(path, dtype="float32", always_2d=True)
            x = torch.from_numpy(data.mean(axis=1))
            if rate != sample_rate:
                x = AF.resample(x, rate, sample_rate)
            audio_dir.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp.wav")
            sf.write(tmp, x.numpy(), sample_rate, subtype="PCM_16")
            tmp.replace(out)
            atomic_write_text(key_file, key)
        dd["wav.scp"][utt] = str(out.resolve())
        if "utt2dur" in dd.tables:
            dd["utt2dur"][utt] = f"{sf.info(str(out)).duration:.4f}"
        converted += 1
    if redone:
        logger.info("%d converted files in %s were redone: their source audio (or the conversion settings) changed "
                    "since they were made: %s", len(redone), audio_dir, " ".join(redone[:20])
                    + (" ..." if len(redone) > 20 else ""))
    return converted


def make_folds(dd: DataDir, protocol: str) -> list[tuple[str, list[str]]]:
    """(fold description, test speakers) per fold, in sorted speaker/session order."""
    speakers = sorted(set(dd["utt2spk"].values()), key=sort_key)
    if protocol == "loso":
        return [(spk, [spk]) for spk in speakers]
    if protocol == "loso-session":
        if "utt2session" not in dd.tables:
            raise MtlserError(f"{dd.path}: protocol loso-session needs utt2session (written by the IEMOCAP prep)")
        spk2sess: dict[str, set] = defaultdict(set)
        for utt, spk in dd["utt2spk"].items():
            spk2sess[spk].add(dd["utt2session"][utt])
        bad = [s for s, ss in spk2sess.items() if len(ss) > 1]
        if bad:
            raise MtlserError(f"{dd.path}: speaker {bad[0]} appears in sessions {sorted(spk2sess[bad[0]])}; "
                              "a speaker must belong to one session")
        sessions = sorted({next(iter(v)) for v in spk2sess.values()}, key=sort_key)
        return [(sess, sorted([s for s in speakers if sess in spk2sess[s]], key=sort_key)) for sess in sessions]
    if kfold_k(protocol) is not None:
        return speaker_kfold(dd, kfold_k(protocol))
    raise MtlserError(f"unknown protocol '{protocol}'; expected loso, loso-session, kfold<K> (e.g. kfold5), "
                      f"partition, cross-corpus or {FIXED}")


def pick_valid(dd: DataDir, train_utts: list[str], test_speakers: list[str], how: str, share: float,
               rng: np.random.Generator) -> list[str]:
    if how == "share":
        # Per training speaker: round(share * n) utterances, at least one, spread over the emotions
        # (round-robin over the speaker's shuffled utterances of each emotion), so valid covers every
        # training speaker and every class without emptying small groups.
        by_spk: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for u in sorted(train_utts, key=sort_key):
            by_spk[dd["utt2spk"][u]][dd["utt2emo"][u]].append(u)
        valid = []
        for spk in sorted(by_spk, key=sort_key):
            queues = []
            for emo in sorted(by_spk[spk]):
                utts = by_spk[spk][emo]
                queues.append([utts[i] for i in rng.permutation(len(utts))])
            n = sum(len(q) for q in queues)
            k = min(n - 1, max(1, int(round(share * n)))) if share > 0 else 0
            order = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
            valid.extend(order[:k])
        return valid
    if how == "session-mate":
        if "utt2session" not in dd.tables:
            raise MtlserError(f"{dd.path}: --valid session-mate needs utt2session")
        sessions = {dd["utt2session"][u] for u in dd.utts if dd["utt2spk"][u] in test_speakers}
        return [u for u in train_utts if dd["utt2session"][u] in sessions]
    if how == "none":
        return []
    raise MtlserError(f"unknown valid selection '{how}'; expected share, session-mate or none")


def published_partition(dd: DataDir, protocol: str, valid: str, partition: str | Path | None) -> list | None:
    """The folds of --partition (protocol partition), or None for the other protocols."""
    if (protocol == "partition") != (partition is not None):
        raise MtlserError("--protocol partition and --partition DIR go together: the partition's files give the "
                          "folds")
    if partition is None:
        return None
    if valid == "session-mate":
        raise MtlserError("--valid session-mate with --protocol partition: a partition has no test speaker's "
                          "session partner; the valid set is drawn from each fold's training side (--valid share), "
                          "or there is none (--valid none)")
    return partition_folds(partition, dd)


def cross_corpus_fold(dd: DataDir, protocol: str, test_corpus: str | None,
                      train_corpora: list[str] | None) -> list | None:
    """The one fold of --protocol cross-corpus: (description, the test corpus's utterances, the training
    corpora's), or None for the other protocols."""
    if (protocol == "cross-corpus") != (test_corpus is not None) or (train_corpora and test_corpus is None):
        raise MtlserError("--protocol cross-corpus and --test-corpus NAME go together (--train-corpora too)")
    if test_corpus is None:
        return None
    if UTT2CORPUS not in dd.tables:
        raise MtlserError(f"{dd.path}: --protocol cross-corpus needs {UTT2CORPUS}; combine the corpora first: "
                          "python -m mtlser.data.combine OUT NAME=DIR ...")
    corpora = sorted(set(dd[UTT2CORPUS].values()), key=sort_key)
    train_corpora = train_corpora or [c for c in corpora if c != test_corpus]
    unknown = [c for c in [test_corpus, *train_corpora] if c not in corpora]
    if unknown or test_corpus in train_corpora:
        raise MtlserError(f"{dd.path / UTT2CORPUS}: corpora {' '.join(corpora)}; the test corpus '{test_corpus}' and "
                          f"the training corpora '{' '.join(train_corpora)}' must be among them and apart"
                          + (f" (unknown: {' '.join(unknown)})" if unknown else ""))
    test = [u for u in dd.utts if dd[UTT2CORPUS][u] == test_corpus]
    rest = [u for u in dd.utts if dd[UTT2CORPUS][u] in train_corpora]
    return [(f"{'+'.join(train_corpora)}->{test_corpus}", test, rest)]


def check_valid_share(share: float | str, option: str = "--valid-share") -> float:
    """The share of each training speaker's utterances that --valid share holds out: a number in (0, 1)
    (1 or more would leave a speaker nothing to train on; --valid none is the way to have no valid set)."""
    try:
        value = float(share)
    except (TypeError, ValueError):
        value = math.nan
    if not 0 < value < 1:  # nan fails too
        raise MtlserError(f"{option} {share}: expected a share of each training speaker's utterances in (0, 1), "
                          "e.g. 0.1 (no valid set: --valid none)")
    return value


def split(data_dir: str | Path, out: str | Path, protocol: str = "loso", valid: str = "share",
          valid_share: float = 0.1, seed: int = 0, audio_dir: str | Path | None = None,
          sample_rate: int = 16000, partition: str | Path | None = None, test_corpus: str | None = None,
          train_corpora: list[str] | None = None) -> list[dict]:
    data_dir, out = Path(data_dir), Path(out)
    check_output(out, [data_dir], "--out", around=[partition])
    if audio_dir is not None:
        check_output(audio_dir, [data_dir, out], "--audio-dir")
    valid_share = check_valid_share(valid_share)
    if protocol == FIXED:
        if valid != "share" or partition is not None:
            raise MtlserError(f"--protocol {FIXED}: the valid set is the corpus's development set (utt2set dev); "
                              f"drop --valid {valid}" + (" and --partition" if partition is not None else ""))
        # Read before the generic checks, so that an utterance in two sets is named as such (file:line).
        sets = read_utt2set(data_dir / UTT2SET)
    dd = validate_data_dir(data_dir)
    if protocol == "loso-session" and valid == "session-mate":
        raise MtlserError("--valid session-mate holds out the test session's other speaker; with loso-session "
                          "that speaker is already in the test set. Use --valid share")
    # A published partition is read first: its entries are matched on the source audio's file names (before
    # conversion), and a partition that does not fit the data fails before any audio is read.
    published = published_partition(dd, protocol, valid, partition) or cross_corpus_fold(
        dd, protocol, test_corpus, train_corpora)
    if published and protocol == "cross-corpus" and valid == "session-mate":
        raise MtlserError("--valid session-mate with --protocol cross-corpus: use --valid share or none")
    check_audio(dd, data_dir)  # truncated files, audio shorter than utt2dur (mtlser.data.audio_check)
    audio_dir = Path(audio_dir) if audio_dir else data_dir.parent / "wav16k"
    n_conv = normalize_audio(dd, audio_dir, sample_rate)
    if n_conv:
        logger.info("%d utterances are not %d Hz mono: read from converted copies in %s (made once per source)",
                    n_conv, sample_rate, audio_dir)
    if protocol == FIXED:
        return write_fixed(dd, out, sets, data_dir)
    rng = np.random.default_rng(seed)
    # Per fold: (description, test utterances, the training side that train and valid come from).
    folds = published or [
        (name, [u for u in dd.utts if dd["utt2spk"][u] in spk], [u for u in dd.utts if dd["utt2spk"][u] not in spk])
        for name, spk in make_folds(dd, protocol)]
    rows = []
    for i, (name, test, rest) in enumerate(folds, 1):
        test_spk = sorted({dd["utt2spk"][u] for u in test}, key=sort_key)
        valid_utts = set(pick_valid(dd, rest, test_spk, valid, valid_share, rng))
        train = [u for u in rest if u not in valid_utts]
        if not train or (not valid_utts and valid != "none") or not test:
            raise MtlserError(f"fold {i} ({name}): empty split (train {len(train)}, valid {len(valid_utts)}, "
                              f"test {len(test)}); need more speakers or utterances")
        assert not set(test) & set(rest), f"test utterances in train/valid of fold {i}"
        leak = {dd["utt2spk"][u] for u in list(valid_utts) + train} & set(test_spk)
        assert published or not leak, f"test speaker(s) {leak} leaked into train/valid of fold {i}"
        fold_dir = out / fold_name(i)
        for split_name, utts in (("train", train), ("valid", sorted(valid_utts, key=sort_key)), ("test", test)):
            if split_name == "valid" and valid == "none":
                remove_written_dir(fold_dir / split_name)  # a valid set of an earlier split would be trained on
                continue
            dd.subset(utts).write(fold_dir / split_name)
        valid_spk = sorted({dd["utt2spk"][u] for u in valid_utts}, key=sort_key)
        rows.append({"fold": fold_name(i), "test": ",".join(test_spk), "valid_speakers": ",".join(valid_spk),
                     "train": len(train), "valid": len(valid_utts), "test_utts": len(test)})
    cross = {"test_corpus": test_corpus, "train_corpora": ",".join(sorted(
        {dd[UTT2CORPUS][u] for u in folds[0][2]}, key=sort_key))} if test_corpus else {}
    header = "fold\ttest_speakers\tvalid_speakers\tn_train\tn_valid\tn_test\n"
    atomic_write_text(out / "folds.tsv", header + "".join(
        f"{r['fold']}\t{r['test']}\t{r['valid_speakers']}\t{r['train']}\t{r['valid']}\t{r['test_utts']}\n"
        for r in rows))
    # The final model's data: every speaker, no valid, no test (trained after cross-validation, if asked).
    # (cross-corpus: every utterance of the training corpora; the test corpus is never trained on.)
    dd.subset(folds[0][2] if test_corpus else list(dd.utts)).write(out / FINAL / "train")
    write_table(out / PROTOCOL_TABLE, {"protocol": protocol, "valid": valid, "valid_share": str(valid_share),
                                   "seed": str(seed), "source": str(data_dir.resolve()),
                                   **({"partition": str(Path(partition).resolve())} if partition else {}),
                                   **cross})
    logger.info("%s: %d folds (%s, valid=%s) written to %s", data_dir, len(rows), protocol, valid, out)
    for r in rows:
        logger.info("  %s test %s: train %d, valid %d, test %d", r["fold"], r["test"], r["train"], r["valid"],
                    r["test_utts"])
    return rows


def write_fixed(dd: DataDir, out: Path, sets: dict[str, str], data_dir: Path) -> list[dict]:
    """The fixed protocol's one fold (train, valid = dev, every test set), final/train (train + dev), the tables."""
    train, dev, tests = fixed_sets(sets, dd.utts, data_dir / UTT2SET)
    fold_dir = out / fold_name(1)
    for name, utts in (("train", train), ("valid", dev), *tests.items()):
        dd.subset(utts).write(fold_dir / name)
    for stale in fold_dir.iterdir():  # a test set of an earlier split that this utt2set no longer has
        if stale.name not in tests and stale.name not in ("train", "valid") and stale.is_dir():
            remove_written_dir(stale)
    spk = {name: sorted({dd["utt2spk"][u] for u in utts}, key=sort_key) for name, utts in tests.items()}
    row = {"fold": fold_name(1), "test": ",".join(spk[TEST_SET]),
           "valid_speakers": ",".join(sorted({dd["utt2spk"][u] for u in dev}, key=sort_key)),
           "train": len(train), "valid": len(dev), "test_utts": len(tests[TEST_SET])}
    atomic_write_text(out / "folds.tsv", "fold\ttest_speakers\tvalid_speakers\tn_train\tn_valid\tn_test\n"
                      f"{row['fold']}\t{row['test']}\t{row['valid_speakers']}\t{row['train']}\t{row['valid']}\t"
                      f"{row['test_utts']}\n")
    # The final model trains on train and dev: a test set is never trained on.
    dd.subset(train + dev).write(out / FINAL / "train")
    write_table(out / PROTOCOL_TABLE, {"protocol": FIXED, "valid": "dev", "test_sets": ",".join(tests),
                                       "source": str(data_dir.resolve())})
    logger.info("%s: the corpus's sets as one fold (%s) written to %s: train %d, valid (dev) %d, %s", data_dir,
                FIXED, fold_dir, len(train), len(dev), ", ".join(f"{n} {len(u)}" for n, u in tests.items()))
    return [row]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stage 2: audio normalisation and fold splits.")
    parser.add_argument("--data-dir", required=True, help="the whole corpus (data/all)")
    parser.add_argument("--out", required=True, help="folds dir to write (e.g. data/loso)")
    parser.add_argument("--protocol", default="loso",
                        help=f"loso | loso-session | kfold<K> | partition | cross-corpus | {FIXED}")
    parser.add_argument("--test-corpus", default=None,
                        help="with --protocol cross-corpus: the corpus (of utt2corpus) tested on, whole")
    parser.add_argument("--train-corpora", default=None,
                        help="with --protocol cross-corpus: the corpora trained and selected on, space-separated "
                             "(default: every other corpus)")
    parser.add_argument("--partition", default=None,
                        help="with --protocol partition: the folder of the published partition files")
    parser.add_argument("--valid", default="share", choices=["share", "session-mate", "none"],
                        help="valid set of each fold, from its training speakers (none: the paper's protocol)")
    parser.add_argument("--valid-share", type=float, default=0.1, help="share of each training speaker (valid=share)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--audio-dir", default=None, help="where converted audio goes (default: DATA_DIR/../wav16k)")
    parser.add_argument("--sample-rate", type=int, default=16000)
    args = parser.parse_args(argv)
    setup_logging()
    split(args.data_dir, args.out, args.protocol, args.valid, args.valid_share, args.seed, args.audio_dir,
          args.sample_rate, args.partition, args.test_corpus,
          args.train_corpora.split() if args.train_corpora else None)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
