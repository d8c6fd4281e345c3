"""Stage 0 helper: give a data dir its emotion inventory, in one line of a recipe's ``local/data.sh``.

Two ways, as the corpus needs:

- ``--map FILE``: ``utt2emo`` holds the corpus's raw labels; the label map
  (:mod:`mtlser.data.emotions`, e.g. ``conf/emotions/iemocap.yaml``) merges some and
  drops the rest. Utterances of dropped labels leave every file of the data dir;
  the log says how many of each raw label went. ``utt2emo`` then holds inventory
  labels and ``emotions`` the map's list. Running it again changes nothing.
- ``--emotions "LABEL ..."``: ``utt2emo`` already holds the final labels; this
  declares their order (the class index and CTC tag of each).

Either way stage 0's validation then checks every label of ``utt2emo`` against
the inventory, naming file and line.

Usage:
    python -m mtlser.data.set_emotions data/all --map conf/emotions/mycorpus.yaml
    python -m mtlser.data.set_emotions data/all --emotions "ang hap sad neu fea"
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from pathlib import Path

from mtlser.data.datadir import DataDir
from mtlser.data.emotions import EmotionMap, check_labels, load_emotion_map
from mtlser.utils import MtlserError, run_main, setup_logging

logger = logging.getLogger(__name__)


def apply_emotion_map(data_dir: str | os.PathLike, emotion_map: EmotionMap) -> dict[str, int]:
    """Map utt2emo through ``emotion_map``, drop utterances of unused labels, write the inventory.

    Returns the number of dropped utterances per raw label. The dir is rewritten as a whole (atomically).
    """
    data_dir = Path(data_dir)
    dd = DataDir.load(data_dir)
    if "utt2emo" not in dd.tables:
        raise MtlserError(f"{data_dir / 'utt2emo'}: missing; write utt2emo (utt raw-label) before applying a label map")
    mapped = {u: emotion_map.apply(raw) for u, raw in dd["utt2emo"].items()}
    dropped = Counter(dd["utt2emo"][u] for u, label in mapped.items() if label is None)
    keep = [u for u, label in mapped.items() if label is not None]
    if not keep:
        raise MtlserError(f"{data_dir / 'utt2emo'}: no utterance has a label that {emotion_map.source} keeps "
                          f"(emotions {' '.join(emotion_map.emotions)}, merged {' '.join(emotion_map.merge) or '-'}); "
                          f"raw labels found: {' '.join(sorted(set(dd['utt2emo'].values())))}")
    out = dd.subset(keep)
    out.tables["utt2emo"] = {u: mapped[u] for u in keep}
    out.emotions = list(emotion_map.emotions)
    out.write(data_dir)
    merged = Counter(raw for raw in dd["utt2emo"].values() if raw in emotion_map.merge)
    logger.info("%s: kept %d of %d utterances as %s (%s)%s", data_dir, len(keep), len(mapped),
                " ".join(emotion_map.emotions), emotion_map.source,
                "; merged " + " ".join(f"{k}->{emotion_map.merge[k]}={n}" for k, n in sorted(merged.items()))
                if merged else "")
    if dropped:
        logger.info("%s: dropped (label not in the map): %s", data_dir,
                    " ".join(f"{k}={n}" for k, n in sorted(dropped.items())))
    return dict(dropped)


def declare_inventory(data_dir: str | os.PathLike, emotions: list[str]) -> None:
    """Write ``emotions`` into a data dir whose utt2emo already holds the final labels."""
    data_dir = Path(data_dir)
    dd = DataDir.load(data_dir)
    dd.emotions = check_labels(list(emotions), "--emotions")
    dd.write(data_dir)
    logger.info("%s: emotion inventory %s", data_dir, " ".join(dd.emotions))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Give a data dir its emotion inventory (stage 0 helper).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("data_dir", help="the data dir stage 0 writes (data/all)")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--map", help="label map YAML: emotions in index order, merge raw -> label; others dropped")
    how.add_argument("--emotions", help="the labels of utt2emo in class-index order, e.g. 'ang hap sad neu fea'")
    args = parser.parse_args(argv)
    setup_logging()
    if not Path(args.data_dir).is_dir():
        raise MtlserError(f"{args.data_dir}: no such data dir; write wav.scp, text, utt2spk and utt2emo first")
    if args.map:
        apply_emotion_map(args.data_dir, load_emotion_map(args.map))
    else:
        declare_inventory(args.data_dir, args.emotions.replace(",", " ").split())
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
