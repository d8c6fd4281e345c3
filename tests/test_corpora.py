"""A corpus is a description: a fourth corpus, declared here in a few lines, gets the whole shared stage 0
(label map, data dir with its inventory, report, summary, release-count warning); the command line finds
the described corpora and refuses other names."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from mtlser.corpora.__main__ import main as corpora_main
from mtlser.corpora.prep import Corpus, Found, Utterance, compare_counts, described, is_hidden, prepare, relpath
from mtlser.data.datadir import read_table, validate_data_dir
from mtlser.data.emotions import EmotionMap, read_inventory
from mtlser.utils import MtlserError, run_main
from tests.conftest import write_wav

# ---------------------------------------------------------------- the description of a made-up corpus
# Layout: <speaker>/<code>_<n>.wav, codes A (angry) N (neutral) S (sad); sentences.txt: "<file stem> <words>".
CODES = {"A": "ang", "N": "neu", "S": "sad"}
EXPECTED_CODES = {"A": 2, "N": 2, "S": 2}


def scan(db_root: Path) -> Found:
    words = dict(line.split(" ", 1) for line in (db_root / "sentences.txt").read_text().splitlines())
    utts, skipped, codes = [], [], {}
    for path in sorted(db_root.glob("*/*")):
        if is_hidden(path.name) or path.suffix != ".wav":
            skipped.append(("hidden" if is_hidden(path.name) else "not_a_clip", relpath(path, db_root)))
            continue
        code, spk = path.stem.split("_")[0], path.parent.name
        if code not in CODES:
            raise MtlserError(f"{path}: unknown code '{code}'")
        codes[code] = codes.get(code, 0) + 1
        utts.append(Utterance(path.stem, path, words.get(path.stem), spk, CODES[code],
                              relpath(path, db_root)))
    return Found(db_root, utts, skipped, facts={"codes": codes})


TOY = Corpus(name="TOY", labels=tuple(CODES.values()), scan=scan,
             release_problems=lambda report, emotion_map: compare_counts("code", report["codes"], EXPECTED_CODES),
             db_root_help="the TOY folder", release_total="6 clips", module="toy")
# ---------------------------------------------------------------- end of the description


@pytest.fixture
def toy(tmp_path):
    root = tmp_path / "TOY"
    for i, (spk, name) in enumerate([("s1", "A_1"), ("s1", "N_1"), ("s1", "S_1"), ("s2", "A_1"), ("s2", "N_1")]):
        write_wav(root / spk / f"{name}.wav", 0.25, seed=i)
    (root / "s2" / ".DS_Store").write_bytes(b"\x00")
    (root / "sentences.txt").write_text("A_1 Go away\nN_1 It is late\n")
    return root


def test_a_fourth_corpus_is_one_description(toy, tmp_path, caplog):
    out = tmp_path / "data" / "all"
    with caplog.at_level(logging.INFO):
        report = prepare(TOY, toy, out, EmotionMap(["neu", "ang"], source="toy.yaml"))
    dd = validate_data_dir(out)
    # ids are <speaker>-<clip> (Kaldi's speaker-prefix rule); the clip names stay in utt2origid
    assert dd.utts == ["s1-A_1", "s1-N_1", "s2-A_1", "s2-N_1"] and read_inventory(out) == ["neu", "ang"]
    assert read_table(out / "utt2origid") == {"s1-A_1": "A_1", "s1-N_1": "N_1", "s2-A_1": "A_1", "s2-N_1": "N_1"}
    assert read_table(out / "text", allow_empty_value=True)["s1-N_1"] == "It is late"
    assert read_table(out / "utt2dur")["s1-A_1"] == "0.2500"
    skipped = (tmp_path / "data/local/toy_prep/skipped").read_text().splitlines()
    assert skipped == ["hidden s2/.DS_Store", "label:sad s1/S_1.wav"]
    written = json.loads((tmp_path / "data/local/toy_prep/counts.json").read_text())
    assert written == report and report["counts"] == {"neu": 2, "ang": 2}
    assert report["codes"] == {"A": 2, "N": 2, "S": 1}
    assert "code S: 1, the release has 2" in caplog.text and "This TOY copy does not give" in caplog.text

    with pytest.raises(MtlserError, match=r"toy.yaml: calm are not TOY labels \(ang neu sad\) nor merge targets"):
        prepare(TOY, toy, tmp_path / "other", EmotionMap(["neu", "calm"], source="toy.yaml"))


def test_the_command_line_takes_the_described_corpora_only(tmp_path, capsys, caplog):
    assert described() == ["crema_d", "iemocap", "msp_podcast", "ravdess"]
    assert run_main(corpora_main, []) == 2
    assert "{crema_d|iemocap|msp_podcast|ravdess}" in capsys.readouterr().err
    assert run_main(corpora_main, ["mini_corpus", "--db-root", str(tmp_path), "--out", str(tmp_path / "all")]) == 1
    assert "'mini_corpus' is not a described corpus; known: crema_d iemocap msp_podcast ravdess" in caplog.text
