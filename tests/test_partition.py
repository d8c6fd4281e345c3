"""Folds from published partition files in EmoBox's format (fold_N/<corpus>_{train,test}_fold_N.jsonl)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from mtlser.data.datadir import read_table
from mtlser.data.split import main as split_main, split
from mtlser.utils import MtlserError, run_main

#: How the partition spells our labels (as EmoBox writes RAVDESS's: full words).
SPELLING = {"ang": "Angry", "hap": "Happy", "sad": "Sad", "neu": "Neutral"}


def entry(utt: str, emo: str) -> dict:
    """A line as the benchmark writes it: its own key and download path, our clip's file name."""
    return {"key": f"corpus-{utt.replace('_', '-')}", "dataset": "corpus", "wav": f"downloads/corpus/wav/{utt}.wav",
            "type": "raw", "sample_rate": 16000, "task": "category", "emo": SPELLING[emo], "channel": 1}


def write_partition(root: Path, folds: list[tuple[list[str], list[str]]], utt2emo: dict[str, str]) -> Path:
    for n, (train, test) in enumerate(folds, 1):
        d = root / f"fold_{n}"
        d.mkdir(parents=True)
        for side, utts in (("train", train), ("test", test)):
            lines = [json.dumps(entry(u, utt2emo[u])) for u in utts]
            (d / f"corpus_{side}_fold_{n}.jsonl").write_text("\n".join(lines) + "\n")
            (d / f"corpus_{side}_fold_{n}.json").write_text("not read")  # EmoBox's .json twin
    (root / "label_map.json").write_text("{}")
    return root


@pytest.fixture
def corpus(make_data_dir):
    data = make_data_dir(n_spk=4, n_utt=6)
    return data, read_table(data / "utt2spk"), read_table(data / "utt2emo")


def test_partition_folds_are_the_files_and_valid_comes_from_the_training_side(corpus, tmp_path, caplog):
    data, utt2spk, utt2emo = corpus
    utts = sorted(utt2spk)
    # Fold 1 holds out one speaker; fold 2 is utterance-level (speakers on both sides), as EmoBox's CREMA-D fold.
    fold1_test = [u for u in utts if utt2spk[u] == "Ses01F"]
    fold2_test = utts[::3]
    folds = [([u for u in utts if u not in fold1_test], fold1_test),
             ([u for u in utts if u not in fold2_test][:-2], fold2_test)]  # 2 utterances in neither list
    part = write_partition(tmp_path / "emobox" / "corpus", folds, utt2emo)
    with caplog.at_level(logging.INFO):
        rows = split(data, tmp_path / "partition", "partition", valid_share=0.25, partition=part)
    assert len(rows) == 2
    for i, (train_side, test) in enumerate(folds, 1):
        fold = tmp_path / "partition" / f"fold{i:02d}"
        got = {p: set(read_table(fold / p / "utt2spk")) for p in ("train", "valid", "test")}
        assert got["test"] == set(test)
        assert got["train"] | got["valid"] == set(train_side) and not got["train"] & got["valid"]
        assert got["valid"] and not got["valid"] & set(test)
    assert "fold_2 is not speaker-independent" in caplog.text
    assert "fold_1 is not speaker-independent" not in caplog.text
    assert "fold_2 lists 22 of the 24 utterances" in caplog.text
    assert "Angry->ang" in caplog.text
    assert read_table(tmp_path / "partition" / "protocol")["partition"] == str(part.resolve())

    # The paper's protocol (no valid set): the whole training side trains.
    split(data, tmp_path / "novalid", "partition", "none", partition=part)
    fold = tmp_path / "novalid" / "fold01"
    assert set(read_table(fold / "train" / "utt2spk")) == set(folds[0][0]) and not (fold / "valid").exists()

    # The command line, as stage 2 runs it.
    rc = run_main(split_main, ["--data-dir", str(data), "--out", str(tmp_path / "cli"), "--protocol", "partition",
                               "--partition", str(part)])
    assert rc == 0 and (tmp_path / "cli" / "fold02" / "test" / "wav.scp").is_file()


def test_keys_that_are_our_ids_match_too(corpus, tmp_path):
    data, utt2spk, utt2emo = corpus
    utts = sorted(utt2spk)
    d = tmp_path / "p" / "fold_1"
    d.mkdir(parents=True)
    for side, part in (("train", utts[6:]), ("test", utts[:6])):
        (d / f"x_{side}_fold_1.jsonl").write_text("".join(
            json.dumps({"key": u, "wav": "elsewhere/a.flac", "emo": utt2emo[u]}) + "\n" for u in part))
    split(data, tmp_path / "out", "partition", valid_share=0.25, partition=tmp_path / "p")
    assert set(read_table(tmp_path / "out" / "fold01" / "test" / "utt2spk")) == set(utts[:6])


def test_partition_errors_name_the_file_and_line(corpus, tmp_path):
    data, utt2spk, utt2emo = corpus
    utts = sorted(utt2spk)
    part = write_partition(tmp_path / "p1", [(utts[6:], utts[:6])], utt2emo)
    test_file = part / "fold_1" / "corpus_test_fold_1.jsonl"
    lines = test_file.read_text().splitlines()

    unknown = dict(json.loads(lines[2]), key="corpus-9999-x", wav="downloads/corpus/wav/9999_x.wav")
    test_file.write_text("\n".join(lines[:2] + [json.dumps(unknown)] + lines[3:]) + "\n")
    with pytest.raises(MtlserError, match=rf"{test_file}:3: key 'corpus-9999-x' .* is no utterance of"):
        split(data, tmp_path / "out", "partition", partition=part)
    assert not (tmp_path / "out").exists() and not (tmp_path / "wav16k").exists()  # failed before any work

    test_file.write_text("\n".join(lines[:1] + ["{not json"] + lines[1:]) + "\n")
    with pytest.raises(MtlserError, match=rf"{test_file}:2: not a JSON object"):
        split(data, tmp_path / "out", "partition", partition=part)

    # A test utterance that also trains.
    test_file.write_text("\n".join(lines + [json.dumps(entry(utts[10], utt2emo[utts[10]]))]) + "\n")
    with pytest.raises(MtlserError, match=r"fold_1: 1 utterances are in both .*a test utterance must never train"):
        split(data, tmp_path / "out", "partition", partition=part)

    # The partition's label of a clip disagrees with ours.
    wrong = dict(json.loads(lines[0]), emo="Angry" if utt2emo[utts[0]] != "ang" else "Sad")
    test_file.write_text("\n".join([json.dumps(wrong)] + lines[1:]) + "\n")
    with pytest.raises(MtlserError, match=r"the partition's label '.*' is more than one of our labels"):
        split(data, tmp_path / "out", "partition", partition=part)

    test_file.unlink()
    with pytest.raises(MtlserError, match=r"expected one \*_test_fold_1.jsonl, found none"):
        split(data, tmp_path / "out", "partition", partition=part)
    with pytest.raises(MtlserError, match="no fold_<N>/ folders"):
        split(data, tmp_path / "out", "partition", partition=tmp_path)
    with pytest.raises(MtlserError, match="go together"):
        split(data, tmp_path / "out", "partition")
    with pytest.raises(MtlserError, match="no test speaker's session partner"):
        split(data, tmp_path / "out", "partition", "session-mate", partition=part)
