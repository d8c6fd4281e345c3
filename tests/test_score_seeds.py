"""Seeds × folds in stage 5: aggregation of a seed group, its report, off folds, chance, compare's verdict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from mtlser.score.__main__ import main
from mtlser.score.aggregate import aggregate, aggregate_seeds
from mtlser.score.compare import compare_experiments
from mtlser.utils import MtlserError

EMO = ["ang", "hap", "sad", "neu"]


def confusion(ua: float, n: int = 10) -> list[list[int]]:
    """A 4-class confusion with n references per class and round(ua * n) right in each: WA = UA = that."""
    right = round(ua * n)
    return [[right if j == i else (n - right if j == (i + 1) % 4 else 0) for j in range(4)] for i in range(4)]


def make_exp(root, name, seed, uas, lam=0.1, speakers=None):
    """An experiment of one seed as stages 3-5 leave it (fold results only), UA = WA = uas per fold."""
    exp = root / name
    speakers = speakers or [f"spk{i}" for i in range(1, len(uas) + 1)]
    for i, (ua, spk) in enumerate(zip(uas, speakers), 1):
        fold = exp / f"fold{i:02d}"
        (fold / "decode_test").mkdir(parents=True)
        cm = confusion(ua)
        (fold / "decode_test" / "result.json").write_text(json.dumps({
            "n": 40, "wa": ua, "ua": ua, "recall": dict(zip(EMO, [ua] * 4)), "emotions": EMO, "confusion": cm,
            "speakers": [spk]}))
        (fold / "config.yaml").write_text(yaml.safe_dump({"loss": {"lambda": lam}, "data": {"token_type": "phncls"},
                                                          "train": {"seed": seed}}))
    aggregate(exp)
    return exp


UAS = {0: [0.6, 0.5, 0.7], 1: [0.7, 0.5, 0.8]}


def test_one_seed_keeps_its_figures_and_says_its_ci_is_over_folds(tmp_path):
    exp = make_exp(tmp_path, "e_seed0", 0, UAS[0])
    r = json.loads((exp / "results.json").read_text())
    assert r["ua"] == pytest.approx(0.6) and r["ua_std"] == pytest.approx(0.1) and r["seed"] == 0
    # The figures RESULTS.md gave before seeds, to the last bit: mean and sample std over folds.
    assert r["ua"] == float(np.array(UAS[0]).mean()) and r["ua_std"] == float(np.array(UAS[0]).std(ddof=1))
    assert r["ua_seed_std"] is None
    ci = sps.ttest_1samp(UAS[0], 0).confidence_interval(0.95)
    assert r["ua_ci"] == pytest.approx([ci.low, ci.high])
    assert r["chance"] == {"wa": 0.25, "ua": 0.25}
    md = (exp / "RESULTS.md").read_text()
    assert "|UA|60.00|10.00|60.00|—|" in md and f"[{100 * ci.low:.2f}, {100 * ci.high:.2f}]|25.00|" in md
    assert "t over the 3 folds (df 2; one seed: a rerun's spread is not in it)" in md
    assert "- seed (train.seed): 0" in md
    assert "|fold02|spk2|40|50.00|50.00|" in md and "|25.00 / 25.00|" in md  # chance beside each fold


def test_seed_group_aggregates_seeds_times_folds(tmp_path):
    exps = [make_exp(tmp_path, f"e_seed{s}", s, uas) for s, uas in UAS.items()]
    s = aggregate_seeds(exps, tmp_path / "e_seeds")
    seed_means = [np.mean(UAS[0]), np.mean(UAS[1])]
    assert s["ua"] == pytest.approx(np.mean(seed_means))
    assert s["ua_seed_std"] == pytest.approx(np.std(seed_means, ddof=1))
    assert s["ua_std"] == pytest.approx(np.sqrt(np.mean([np.var(UAS[k], ddof=1) for k in UAS])))
    ci = sps.ttest_1samp(seed_means, 0).confidence_interval(0.95)
    assert s["ua_ci"] == pytest.approx([ci.low, ci.high])
    assert (s["num_seeds"], s["num_folds"], s["n"], len(s["runs"])) == (2, 3, 120, 6)
    assert s["seeds"] == [0, 1] and np.sum(s["confusion"]) == 240
    md = (tmp_path / "e_seeds" / "RESULTS.md").read_text()
    assert "std over seeds = sample std of the per-seed means" in md and "t over the 2 seed means (df 1)" in md
    assert f"|UA|{100 * s['ua']:.2f}|{100 * s['ua_std']:.2f}|" in md and f"|{100 * s['ua_seed_std']:.2f}|" in md
    assert "### Per seed" in md and "|0|" in md and "|1|" in md
    assert "|fold01|spk1|40|65.00 ± 7.07|65.00 ± 7.07|25.00 / 25.00|60.00|70.00|" in md
    assert "summed over folds and seeds" in md
    saved = json.loads((tmp_path / "e_seeds" / "results.json").read_text())
    assert saved["ua"] == s["ua"] and saved["members"] == [str(e) for e in exps]


def test_seed_group_refuses_a_repeated_seed_or_another_split(tmp_path):
    a = make_exp(tmp_path, "a", 0, UAS[0])
    b = make_exp(tmp_path, "b", 0, UAS[1])
    with pytest.raises(MtlserError, match="seed 0 fold01 is also in .*trains with its own seed"):
        aggregate_seeds([a, b], tmp_path / "g")
    c = make_exp(tmp_path, "c", 1, UAS[1], speakers=["x", "y", "z"])
    with pytest.raises(MtlserError, match="fold01 tests \\['x'\\] but another seed tests \\['spk1'\\]"):
        aggregate_seeds([a, c], tmp_path / "g")


def test_one_experiment_of_mixed_seeds_is_refused(tmp_path):
    exp = make_exp(tmp_path, "e", 0, UAS[0])
    cfg = exp / "fold02" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("seed: 0", "seed: 3"))
    with pytest.raises(MtlserError, match="trained with seeds \\['0', '3'\\].*one experiment has one seed"):
        aggregate(exp)


def test_a_fold_that_is_off_is_flagged_with_its_data(tmp_path):
    exp = make_exp(tmp_path, "e", 0, [0.7, 0.7, 0.8, 0.6, 0.2, 0.7])
    r = json.loads((exp / "results.json").read_text())
    assert r["off_folds"] == ["fold05"]
    md = (exp / "RESULTS.md").read_text()
    assert "### Folds that are off" in md
    assert "**fold05** (test speakers spk5): UA 20.00, WA 20.00; chance UA 25.00, WA 25.00; " \
           "class counts: ang 10, hap 10, sad 10, neu 10" in md
    assert "|ang|2|8|0|0|" in md  # fold05's confusion row of ang


def test_compare_pairs_by_seed_and_fold_and_prints_the_verdict(tmp_path, capsys):
    base = [make_exp(tmp_path, f"l0_seed{s}", s, uas, lam=0) for s, uas in UAS.items()]
    mtl = [make_exp(tmp_path, f"l1_seed{s}", s, [u + 0.1 for u in uas]) for s, uas in UAS.items()]
    aggregate_seeds(base, tmp_path / "l0_seeds")
    aggregate_seeds(mtl, tmp_path / "l1_seeds")
    c = compare_experiments([tmp_path / "l0_seeds", tmp_path / "l1_seeds"])
    p = c["experiments"][1]["paired_ua"]
    assert (p["pairs"], p["up"], p["num_seeds"], p["num_folds"]) == (6, 6, 2, 3)
    assert p["diff"] == pytest.approx(0.1) and p["permutation_p"] == pytest.approx(2 / 64)
    assert main(["compare", str(tmp_path / "l0_seeds"), str(tmp_path / "l1_seeds"),
                 "--out", str(tmp_path / "cmp.md")]) == 0
    out = capsys.readouterr().out
    # Each seed's mean difference is 0.1 exactly (rounded counts), so the CI has no width.
    assert "l1_seeds − l0_seeds: WA +10.00, 95 % CI [+10.00, +10.00]: shown (higher) over 3 folds × 2 seeds" in out
    md = (tmp_path / "cmp.md").read_text()
    assert "# Comparison over 3 folds × 2 seeds" in md and "|6 / 0 of 6|" in md
    # A group's setup (λ, CTC targets) is its members'.
    assert "|l0_seeds|0|— (no CTC)|" in md and "|l1_seeds|0.1|phncls|" in md

    # A one-seed experiment beside a group pairs only its seed.
    c = compare_experiments([base[1], tmp_path / "l1_seeds"])
    assert c["experiments"][1]["paired_ua"]["pairs"] == 3 and not c["experiments"][1]["pairing_note"]
    # Two one-seed experiments of different seeds pair by fold, and say so.
    c = compare_experiments([base[0], mtl[1]])
    assert c["experiments"][1]["paired_ua"]["pairs"] == 3
    assert "seeds differ (0 and 1): paired by fold only" in c["experiments"][1]["pairing_note"]


def test_card_gives_the_seed_the_ci_and_its_group(tmp_path):
    from mtlser.export.card import experiment_facts, uncertainty_lines

    exps = [make_exp(tmp_path, f"e_seed{s}", s, uas) for s, uas in UAS.items()]
    alone = experiment_facts(exps[0])
    assert alone["seed"] == 0 and "seed_group" not in alone
    assert "One seed: how far a rerun with another seed moves these figures was not measured" in \
        " ".join(uncertainty_lines(alone))
    s = aggregate_seeds(exps, tmp_path / "e_seeds")
    cv = experiment_facts(exps[1])
    assert cv["seed_group"]["dir"] == str(tmp_path / "e_seeds") and cv["seed_group"]["seeds"] == [0, 1]
    text = " ".join(uncertainty_lines(cv))
    assert text.startswith(f"Trained with seed 1; 95 % CI of the UA: [{100 * cv['ua_ci'][0]:.1f}, ")
    assert f"std over seeds (what a rerun moves) WA {100 * s['wa_seed_std']:.1f}, UA {100 * s['ua_seed_std']:.1f}" \
        in text
    # A dir named like a member but not listed in the group is not one.
    other = make_exp(tmp_path, "e_seed7", 7, UAS[0])
    assert "seed_group" not in experiment_facts(other)
