"""Scoring's edge cases: hypotheses for other utterances, labels outside the emotion list, an empty test set,
a class absent from a fold's references. Each a clear message or a stated figure, never a traceback or NaN."""

from __future__ import annotations

import json

import pytest
import yaml

from mtlser.data.datadir import write_table
from mtlser.score.aggregate import aggregate
from mtlser.score.fold import score_fold
from mtlser.utils import MtlserError


def decode_dir(tmp_path, refs: dict, hyps: dict, name: str = "fold01"):
    ref, dec = tmp_path / "data" / name, tmp_path / "exp" / name / "decode_test"
    ref.mkdir(parents=True, exist_ok=True)
    write_table(ref / "utt2emo", refs)
    write_table(ref / "utt2spk", {u: "Ses01F" for u in refs})
    write_table(dec / "utt2emo_hyp", hyps)
    (dec / "data_dir").write_text(str(ref) + "\n")
    # The model's emotion list, as training leaves it beside the decode dir.
    (dec.parent / "model.yaml").write_text(yaml.safe_dump({"emotions": ["ang", "hap", "sad", "neu"]}))
    return dec


def test_extra_hypotheses_are_named(tmp_path):
    dec = decode_dir(tmp_path, {"u1": "ang", "u2": "hap"}, {"u1": "ang", "u2": "hap", "u9": "sad", "u8": "neu"})
    with pytest.raises(MtlserError) as e:
        score_fold(dec)
    msg = str(e.value)
    # Before: "(e.g. missing [])". Now the extra ids are named, with their count, and nothing is called missing.
    assert "2 hypothesis utterance(s) not in the references, e.g. ['u8', 'u9']" in msg
    assert "without a hypothesis" not in msg and "missing []" not in msg


def test_missing_and_extra_hypotheses_both_named(tmp_path):
    dec = decode_dir(tmp_path, {"u1": "ang", "u2": "hap"}, {"u1": "ang", "u3": "hap"})
    with pytest.raises(MtlserError, match=r"1 reference utterance\(s\) without a hypothesis, e.g. \['u2'\]; "
                                          r"1 hypothesis utterance\(s\) not in the references, e.g. \['u3'\]"):
        score_fold(dec)


def test_reference_label_outside_the_emotion_list_names_file_and_line(tmp_path):
    dec = decode_dir(tmp_path, {"u1": "ang", "u2": "fru", "u3": "sad"}, {"u1": "ang", "u2": "hap", "u3": "sad"})
    with pytest.raises(MtlserError) as e:  # before: a KeyError traceback
        score_fold(dec)
    assert f"{tmp_path / 'data/fold01/utt2emo'}:2: 'u2' has reference label 'fru'" in str(e.value)


def test_unknown_hypothesis_label_names_file_and_line(tmp_path):
    dec = decode_dir(tmp_path, {"u1": "ang", "u2": "hap"}, {"u1": "ang", "u2": "joy"})
    with pytest.raises(MtlserError, match=r"utt2emo_hyp:2: 'u2' has unknown label 'joy'"):
        score_fold(dec)


def test_empty_test_set_is_an_error_not_nan(tmp_path):
    dec = decode_dir(tmp_path, {}, {})
    with pytest.raises(MtlserError, match="no utterances; an empty test set has no WA or UA"):
        score_fold(dec)
    assert not (dec / "result.json").exists()  # before: {"wa": NaN, ...}


def test_class_absent_from_a_fold_is_reported(tmp_path):
    # No sad reference in this fold: UA is over the 3 classes present, and result.txt says so.
    dec = decode_dir(tmp_path, {"u1": "ang", "u2": "hap", "u3": "neu", "u4": "neu"},
                     {"u1": "ang", "u2": "sad", "u3": "neu", "u4": "hap"})
    r = score_fold(dec)
    assert r["absent_classes"] == ["sad"]
    assert r["recall"]["sad"] is None and r["ua"] == pytest.approx((1 + 0 + 0.5) / 3)
    txt = (dec / "result.txt").read_text()
    assert "UA over 3 of 4 classes: sad absent from this fold's references (no recall)" in txt
    assert [line for line in txt.splitlines() if line.startswith("sad ")][0].endswith("absent from the references")
    saved = json.loads((dec / "result.json").read_text())  # strict JSON: no NaN anywhere
    assert saved["absent_classes"] == ["sad"] and saved["recall"]["sad"] is None
    # The experiment's report explains the n/a.
    aggregate(tmp_path / "exp")
    report = (tmp_path / "exp" / "RESULTS.md").read_text()
    assert "n/a: the class is absent from that fold's references" in report
