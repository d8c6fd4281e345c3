"""Issue 21's figures over folds and seeds: macro-/weighted F1 and CCC, r, MAE per attribute (and their mean)
in results.json and RESULTS.md with the spreads and CI WA and UA have; the default figures unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from mtlser.score.__main__ import main
from mtlser.score.compare import compare_experiments

EMO = ["ang", "hap", "sad", "neu"]
ATTRS = ["arousal", "valence"]


def fold_result(ua: float, f1: float, wf1: float, cccs: list[float]) -> dict:
    right = round(ua * 10)
    cm = [[right if j == i else (10 - right if j == (i + 1) % 4 else 0) for j in range(4)] for i in range(4)]
    attrs = {"attributes": ATTRS, "ccc": dict(zip(ATTRS, cccs)), "pearson": dict(zip(ATTRS, [c + 0.1 for c in cccs])),
             "mae": dict(zip(ATTRS, [1 - c for c in cccs]))}
    for m in ("ccc", "pearson", "mae"):
        attrs[f"mean_{m}"] = float(np.mean(list(attrs[m].values())))
    return {"n": 40, "wa": ua, "ua": ua, "recall": dict(zip(EMO, [ua] * 4)), "emotions": EMO, "confusion": cm,
            "speakers": ["spk"], "macro_f1": f1, "weighted_f1": wf1, "attributes": attrs}


def make_exp(root, name, seed, folds):
    exp = root / name
    for i, args in enumerate(folds, 1):
        fold = exp / f"fold{i:02d}"
        (fold / "decode_test").mkdir(parents=True)
        r = fold_result(*args)
        r["speakers"] = [f"spk{i}"]
        (fold / "decode_test" / "result.json").write_text(json.dumps(r))
        (fold / "config.yaml").write_text(yaml.safe_dump({"loss": {"lambda": 0.1}, "data": {"token_type": "phncls"},
                                                          "train": {"seed": seed}}))
    assert main(["aggregate", str(exp)]) == 0
    return exp


FOLDS = {0: [(0.6, 0.5, 0.55, [0.2, 0.4]), (0.5, 0.3, 0.35, [0.1, 0.5]), (0.7, 0.6, 0.65, [0.3, 0.3])],
         1: [(0.7, 0.6, 0.6, [0.3, 0.5]), (0.5, 0.4, 0.4, [0.2, 0.2]), (0.8, 0.7, 0.7, [0.4, 0.6])]}


def test_one_seed_gives_f1_and_attribute_figures_with_their_spread(tmp_path):
    exp = make_exp(tmp_path, "e0", 0, FOLDS[0])
    r = json.loads((exp / "results.json").read_text())
    f1 = [f[1] for f in FOLDS[0]]
    assert r["macro_f1"] == pytest.approx(np.mean(f1)) and r["macro_f1_std"] == pytest.approx(np.std(f1, ddof=1))
    ci = sps.ttest_1samp(f1, 0).confidence_interval(0.95)
    assert r["macro_f1_ci"] == pytest.approx([ci.low, ci.high]) and r["macro_f1_seed_std"] is None
    assert r["weighted_f1"] == pytest.approx(np.mean([f[2] for f in FOLDS[0]]))
    # Pooled macro-F1 from the summed confusion: every class has recall = precision = 0.6 there.
    assert r["pooled_macro_f1"] == pytest.approx(0.6)
    a = r["attributes"]
    arousal = [f[3][0] for f in FOLDS[0]]
    assert a["ccc"]["arousal"]["mean"] == pytest.approx(np.mean(arousal))
    assert a["ccc"]["arousal"]["std"] == pytest.approx(np.std(arousal, ddof=1))
    mean_ccc = [np.mean(f[3]) for f in FOLDS[0]]
    assert a["mean_ccc"]["mean"] == pytest.approx(np.mean(mean_ccc))
    assert a["mae"]["valence"]["mean"] == pytest.approx(np.mean([1 - f[3][1] for f in FOLDS[0]]))
    assert r["folds"][0]["macro_f1"] == 0.5 and r["folds"][0]["attributes"]["ccc"]["arousal"] == 0.2
    md = (exp / "RESULTS.md").read_text()
    assert f"|macro-F1|{100 * np.mean(f1):.2f}|{100 * np.std(f1, ddof=1):.2f}|60.00|—|" in md
    assert "|weighted F1|" in md and "### Attributes" in md
    assert f"|arousal|CCC|{np.mean(arousal):.4f}|{np.std(arousal, ddof=1):.4f}|—|" in md
    assert f"|mean|CCC|{np.mean(mean_ccc):.4f}|" in md and "|valence|MAE|" in md and "|arousal|r|" in md
    assert "|fold|test speakers|n|WA|UA|macro-F1|mean CCC|recall ang|" in md
    assert f"|fold01|spk1|40|60.00|60.00|50.00|{np.mean(FOLDS[0][0][3]):.4f}|" in md


def test_seed_group_gives_f1_and_ccc_over_seeds_and_compare_pairs_them(tmp_path):
    exps = [make_exp(tmp_path, f"e{s}", s, folds) for s, folds in FOLDS.items()]
    assert main(["aggregate", *map(str, exps), "--seeds-out", str(tmp_path / "group")]) == 0
    g = json.loads((tmp_path / "group" / "results.json").read_text())
    seed_means = [np.mean([f[1] for f in FOLDS[s]]) for s in FOLDS]
    assert g["macro_f1"] == pytest.approx(np.mean(seed_means))
    assert g["macro_f1_seed_std"] == pytest.approx(np.std(seed_means, ddof=1))
    ccc_means = [np.mean([f[3][0] for f in FOLDS[s]]) for s in FOLDS]
    assert g["attributes"]["ccc"]["arousal"]["seed_std"] == pytest.approx(np.std(ccc_means, ddof=1))
    md = (tmp_path / "group" / "RESULTS.md").read_text()
    assert "|macro-F1|" in md and "### Attributes" in md and "macro-F1|mean CCC|" in md
    c = compare_experiments(exps)
    b = c["experiments"][1]
    assert b["paired_macro_f1"]["diff"] == pytest.approx(np.mean([y[1] - x[1] for x, y in zip(*FOLDS.values())]))
    assert b["paired_ccc"]["diff"] == pytest.approx(np.mean([np.mean(y[3]) - np.mean(x[3])
                                                             for x, y in zip(*FOLDS.values())]))
    assert any(v.startswith("mean CCC +0.") for v in b["verdicts"]), b["verdicts"]
