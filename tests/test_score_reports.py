"""Stage 5 on hand-made decode dirs and results: fold scores, the aggregate report, the comparison table."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from scipy import stats

from mtlser.data.datadir import write_table
from mtlser.score.aggregate import aggregate
from mtlser.score.compare import compare, compare_experiments
from mtlser.score.fold import score_fold
from mtlser.utils import MtlserError

EMO = ["ang", "hap", "sad", "neu"]


def test_fold_score_by_hand(tmp_path):
    ref, dec = tmp_path / "ref", tmp_path / "exp/fold01/decode_test"
    refs = {"u1": "ang", "u2": "ang", "u3": "hap", "u4": "sad", "u5": "neu", "u6": "neu"}
    hyps = {"u1": "ang", "u2": "neu", "u3": "hap", "u4": "hap", "u5": "neu", "u6": "neu"}
    write_table(ref / "utt2emo", refs)
    write_table(ref / "utt2spk", {u: "Ses01F" for u in refs})
    (ref / "emotions").write_text("".join(e + "\n" for e in EMO))  # the classes, without a model.yaml
    write_table(ref / "text_char", {"u1": "a_0 b_0", "u2": "c_0", "u3": "", "u4": "d_2 e_2", "u5": "f_3",
                                    "u6": "g_3"})
    write_table(dec / "utt2emo_hyp", hyps)
    write_table(dec / "text_hyp", {"u1": "a_0", "u2": "c_0", "u3": "x_1", "u4": "d_2 e_2", "u5": "f_3",
                                   "u6": "h_3"})
    (dec / "data_dir").write_text(str(ref) + "\n")
    # The model's config names its CTC targets: the token error rate is on text_char.
    (dec.parent / "config.yaml").write_text(yaml.safe_dump({"data": {"token_type": "char"}}))
    r = score_fold(dec)
    assert r["wa"] == pytest.approx(4 / 6)
    assert r["ua"] == pytest.approx((1 / 2 + 1 + 0 + 1) / 4)
    assert r["recall"] == {"ang": 0.5, "hap": 1.0, "sad": 0.0, "neu": 1.0}
    assert r["precision"] == {"ang": 1.0, "hap": 0.5, "sad": None, "neu": pytest.approx(2 / 3)}
    assert r["confusion"] == [[1, 0, 0, 1], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 2]]
    # u3 has no reference tokens (non-verbal only) and is not counted: 2 errors in 7 tokens.
    assert r["ctc_ter"] == pytest.approx(2 / 7) and r["token_type"] == "char"
    txt = (dec / "result.txt").read_text()
    assert "WA 0.6667  UA 0.6250  CTC TER 0.2857 (char)" in txt
    assert re.search(r"\nsad +0\.0000 +n/a +1\n", txt) and re.search(r"\nneu +0 +0 +0 +2\n", txt)


def fold_result(speaker, wa, ua, cm):
    return {"n": int(np.sum(cm)), "wa": wa, "ua": ua, "recall": dict(zip(EMO, [0.5] * 4)),
            "precision": dict(zip(EMO, [0.5] * 4)), "emotions": EMO, "confusion": cm, "speakers": [speaker],
            "ctc_ter": 0.4}


def make_exp(root, name, lam, was, uas, speakers=None, token_type="phncls", fusion=None):
    """An experiment dir as stages 3-5 leave it, with the per-fold figures given."""
    exp = root / name
    speakers = speakers or [f"Ses{i // 2 + 1:02d}{'FM'[i % 2]}" for i in range(len(uas))]
    for i, (wa, ua, spk) in enumerate(zip(was, uas, speakers), 1):
        fold = exp / f"fold{i:02d}"
        (fold / "decode_test").mkdir(parents=True)
        cm = [[5, 1, 0, 0], [1, 5, 0, 0], [0, 0, 4, 2], [0, 1, 1, 5]]
        (fold / "decode_test/result.json").write_text(json.dumps(fold_result(spk, wa, ua, cm)))
        (fold / "config.yaml").write_text(yaml.safe_dump({"loss": {"lambda": lam},
                                                          "data": {"token_type": token_type}}))
        (fold / "best.json").write_text(json.dumps({"epoch": 7 + i}))
        if fusion is not None:
            from safetensors.torch import save_file
            import torch

            save_file({"fusion.logits": torch.tensor(fusion[i - 1])}, str(fold / "best.safetensors"))
    return exp


def test_aggregate_means_std_pooled_confusion_and_report(tmp_path):
    exp = make_exp(tmp_path, "train_mtl_loso", 0.1, [0.7, 0.8, 0.9], [0.6, 0.8, 0.7],
                   fusion=[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    s = aggregate(exp)
    assert s["wa"] == pytest.approx(0.8) and s["wa_std"] == pytest.approx(0.1)
    assert s["ua"] == pytest.approx(0.7) and s["ua_std"] == pytest.approx(0.1)
    assert s["confusion"] == [[15, 3, 0, 0], [3, 15, 0, 0], [0, 0, 12, 6], [0, 3, 3, 15]]
    assert s["n"] == 75 and s["pooled_wa"] == pytest.approx(57 / 75)
    assert s["pooled_ua"] == pytest.approx(np.mean([15 / 18, 15 / 18, 12 / 18, 15 / 21]))
    w = [np.exp(x) / np.exp(x).sum() for x in ([0, 0, 0], [1, 0, 0], [0, 0, 1])]
    assert s["fusion_weights_mean"] == pytest.approx(np.mean(w, axis=0).tolist())
    md = (exp / "RESULTS.md").read_text()
    assert "|WA|80.00|10.00|76.00|" in md and "|UA|70.00|10.00|" in md
    assert "|fold02|Ses01M|25|80.00|80.00|" in md and "|9|" in md  # best epoch of fold02
    assert "- objective: L = CE + 0.1 · CTC" in md and "mtlser git hash" in md and "- GPU:" in md
    assert "|ang|15|3|0|0|" in md
    assert (exp / "confusion.png").stat().st_size > 1000 and (exp / "fusion_weights.png").stat().st_size > 1000
    assert f"|{np.mean(w, axis=0)[0]:.3f}|" in md


def test_aggregate_names_the_missing_fold(tmp_path):
    exp = make_exp(tmp_path, "e", 0.1, [0.7, 0.8], [0.6, 0.8])
    (exp / "fold02/decode_test/result.json").unlink()
    with pytest.raises(MtlserError, match=r"fold02/decode_test/result.json: missing; score fold02"):
        aggregate(exp)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A lambda sweep over 10 folds: 0.01 and 0.1 help on nearly every fold, 1 does not."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    base_ua = rng.uniform(0.65, 0.8, 10)
    base_wa = rng.uniform(0.65, 0.8, 10)
    exps = [make_exp(tmp_path, "train_mtl_loso_lambda0", 0.0, base_wa, base_ua)]
    gains = {0.01: 0.02, 0.1: 0.03, 1.0: 0.0}
    for lam, g in gains.items():
        ua = base_ua + g + rng.normal(0, 0.01, 10)
        wa = base_wa + g + rng.normal(0, 0.01, 10)
        exps.append(make_exp(tmp_path, f"train_mtl_loso_lambda{lam:g}", lam, wa, ua))
    for e in exps:
        aggregate(e)
    return exps


def test_compare_pairs_each_fold_with_the_baseline(tmp_path, sweep):
    exps = sweep
    c = compare_experiments(exps)
    base = {f: r["ua"] for f, r in c["experiments"][0]["folds"].items()}
    e = c["experiments"][2]  # lambda 0.1
    ua = {f: r["ua"] for f, r in e["folds"].items()}
    folds = sorted(base)
    assert e["lambda"] == 0.1
    assert e["paired_ua"]["diff"] == pytest.approx(np.mean([ua[f] - base[f] for f in folds]))
    assert e["paired_ua"]["t_p"] == pytest.approx(stats.ttest_rel([ua[f] for f in folds],
                                                                  [base[f] for f in folds]).pvalue)
    assert e["paired_ua"]["wilcoxon_p"] == pytest.approx(stats.wilcoxon([ua[f] - base[f] for f in folds]).pvalue)
    assert e["paired_ua"]["up"] + e["paired_ua"]["down"] == 10 and e["paired_ua"]["up"] >= 9
    assert e["paired_ua"]["wilcoxon_p"] < 0.01 and c["experiments"][3]["paired_ua"]["t_p"] > 0.01

    md = compare(exps, tmp_path / "lambdas.md")
    rows = [line for line in md.splitlines() if line.startswith("|train_mtl")]
    assert [r.split("|")[2] for r in rows] == ["0", "0.01", "0.1", "1"]
    assert rows[0].split("|")[3] == "— (no CTC)" and rows[2].split("|")[3] == "phncls"
    assert f"|{100 * e['paired_ua']['diff']:+.2f}|" in rows[2]
    assert f"{e['paired_ua']['up']} / {e['paired_ua']['down']} of 10" in rows[2]
    assert "## UA per fold" in md and f"|fold01|Ses01F|{100 * base['fold01']:.2f}|" in md
    assert "paper" not in md  # no reference given: no published figures


def test_compare_with_the_papers_figures_marked_as_such(tmp_path, sweep):
    exps = sweep
    ref = tmp_path / "paper.yaml"
    ref.write_text(yaml.safe_dump({"source": "Li et al. (the paper)", "label": "paper",
                                   "rows": [{"lambda": 0, "wa": 72.4, "ua": 73.9}, {"lambda": 0.1, "wa": 76.0,
                                                                                      "ua": 76.9},
                                            {"lambda": 0.01, "ua": 76.7}]}))
    md = compare(exps, tmp_path / "lambdas.md", ref)
    assert "|paper WA|paper UA|" in md
    rows = {line.split("|")[2]: line for line in md.splitlines() if line.startswith("|train_mtl")}
    assert rows["0"].endswith("|72.4|73.9|") and rows["0.1"].endswith("|76.0|76.9|")
    assert rows["0.01"].endswith("|—|76.7|") and rows["1"].endswith("|—|—|")
    assert "published figures of Li et al. (the paper), matched by λ — not results of this run" in md

    # Beside experiments of another setup (here: other CTC targets) the published figures are left out.
    ref.write_text(yaml.safe_dump({**yaml.safe_load(ref.read_text()), "setup": {"token_type": "char"}}))
    md = compare(exps, tmp_path / "lambdas.md", ref)
    rows = {line.split("|")[2]: line for line in md.splitlines() if line.startswith("|train_mtl")}
    assert rows["0"].endswith("|72.4|73.9|")  # single task: no CTC targets to differ
    assert rows["0.1"].endswith("|—|—|")
    assert "left out for train_mtl_loso_lambda0.01, train_mtl_loso_lambda0.1, train_mtl_loso_lambda1" in md


def test_compare_refuses_folds_of_another_protocol(tmp_path):
    a = make_exp(tmp_path, "a", 0.0, [0.7, 0.8], [0.7, 0.8])
    b = make_exp(tmp_path, "b", 0.1, [0.7, 0.8], [0.7, 0.8], speakers=["Ses01F,Ses01M", "Ses02F,Ses02M"])
    aggregate(a)
    aggregate(b)
    with pytest.raises(MtlserError, match="folds are paired by name, so compare experiments of the same protocol"):
        compare([a, b], tmp_path / "x.md")
    with pytest.raises(MtlserError, match=r"c/results.json: missing; aggregate .*/c first"):
        compare([a, tmp_path / "c"], tmp_path / "x.md")
