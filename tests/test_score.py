"""WA / UA on hand-computed confusion matrices, fold scoring, aggregation and comparison."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mtlser.data.datadir import DataDir, write_table
from mtlser.score.aggregate import aggregate
from mtlser.score.compare import compare
from mtlser.score.fold import score_fold
from mtlser.score.metrics import (
    confusion_matrix,
    edit_distance,
    per_class_recall,
    unweighted_accuracy,
    weighted_accuracy,
)
from mtlser.utils import MtlserError


def test_wa_ua_by_hand():
    # ang: 8 of 10 right; hap: 1 of 2; sad: 3 of 4; neu: 4 of 4  -> WA 16/20, UA (0.8+0.5+0.75+1)/4
    cm = np.array([[8, 1, 1, 0], [1, 1, 0, 0], [0, 0, 3, 1], [0, 0, 0, 4]])
    assert weighted_accuracy(cm) == pytest.approx(16 / 20)
    assert unweighted_accuracy(cm) == pytest.approx((0.8 + 0.5 + 0.75 + 1.0) / 4)
    # A majority-class guesser: high WA, UA at chance.
    cm = np.array([[0, 0, 0, 10], [0, 0, 0, 10], [0, 0, 0, 10], [0, 0, 0, 70]])
    assert weighted_accuracy(cm) == pytest.approx(0.7)
    assert unweighted_accuracy(cm) == pytest.approx(0.25)


def test_confusion_and_absent_class():
    cm = confusion_matrix([0, 0, 1, 3], [0, 1, 1, 3], 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    rec = per_class_recall(cm)
    assert math.isnan(rec[2])
    # A class absent from the references is left out of UA, not counted as 0.
    assert unweighted_accuracy(cm) == pytest.approx((0.5 + 1 + 1) / 3)


def test_edit_distance():
    assert edit_distance("a b c".split(), "a c".split()) == 1
    assert edit_distance([], "a b".split()) == 2
    assert edit_distance("S0 V0".split(), "S0 V0".split()) == 0


def _fold(tmp_path, name, ref, hyp, speakers="Ses01F"):
    data = tmp_path / "data" / name
    utts = [f"u{i:02d}" for i in range(len(ref))]
    DataDir({"utt2emo": dict(zip(utts, ref)), "utt2spk": {u: speakers for u in utts},
             "text_phncls": {u: "S0 V0" for u in utts}}, emotions=["ang", "hap", "sad", "neu"]).write(data)
    dec = tmp_path / "exp" / name / "decode_test"
    dec.mkdir(parents=True)
    write_table(dec / "utt2emo_hyp", dict(zip(utts, hyp)))
    write_table(dec / "text_hyp", {u: "S0" for u in utts})
    (dec / "data_dir").write_text(str(data) + "\n")
    return dec


def test_score_fold_and_aggregate(tmp_path):
    d1 = _fold(tmp_path, "fold01", ["ang", "hap", "sad", "neu"], ["ang", "hap", "sad", "ang"])
    d2 = _fold(tmp_path, "fold02", ["ang", "ang", "neu", "neu"], ["ang", "neu", "neu", "neu"], "Ses01M")
    r1 = score_fold(d1)
    assert r1["wa"] == pytest.approx(0.75) and r1["ua"] == pytest.approx(0.75)
    assert r1["ctc_ter"] == pytest.approx(0.5)  # one deletion per 2-token reference
    assert "WA 0.7500  UA 0.7500" in (d1 / "result.txt").read_text()
    r2 = score_fold(d2)
    assert r2["ua"] == pytest.approx((0.5 + 1.0) / 2)
    summary = aggregate(tmp_path / "exp")
    assert summary["wa"] == pytest.approx((0.75 + 0.75) / 2)
    assert summary["ua"] == pytest.approx((0.75 + 0.75) / 2)
    assert summary["pooled_wa"] == pytest.approx(6 / 8)
    assert np.array(summary["confusion"]).sum() == 8
    report = (tmp_path / "exp" / "RESULTS.md").read_text()
    assert "|WA|75.00|" in report and "torch version" in report
    assert (tmp_path / "exp" / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_score_fold_mismatch_is_a_clear_error(tmp_path):
    dec = _fold(tmp_path, "fold01", ["ang", "hap"], ["ang", "hap"])
    write_table(dec / "utt2emo_hyp", {"u00": "ang"})
    with pytest.raises(MtlserError, match="utterances differ.*decode that data dir again"):
        score_fold(dec)


def test_compare_paired_over_folds(tmp_path):
    def results(name, uas):
        d = tmp_path / name
        d.mkdir()
        folds = [{"fold": f"fold{i + 1:02d}", "ua": u, "wa": u, "speakers": [f"S{i}"]} for i, u in enumerate(uas)]
        (d / "results.json").write_text(json.dumps({
            "wa": float(np.mean(uas)), "ua": float(np.mean(uas)), "wa_std": float(np.std(uas, ddof=1)),
            "ua_std": float(np.std(uas, ddof=1)), "pooled_wa": 0.5, "pooled_ua": 0.5, "folds": folds}))
        return d

    base = results("single", [0.60, 0.62, 0.58, 0.61, 0.59, 0.63, 0.60, 0.57, 0.62, 0.61])
    better = results("mtl", [0.64, 0.66, 0.61, 0.65, 0.62, 0.66, 0.64, 0.61, 0.65, 0.66])
    text = compare([base, better], tmp_path / "cmp.md")
    row = [line for line in text.splitlines() if line.startswith("|mtl|")][0]
    # UA rose on all 10 folds, fell on none; the paired t-test (WA / UA) is far below 0.05.
    assert "10 / 0 of 10" in row and "|0.000 / 0.000|" in row
