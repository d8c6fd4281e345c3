"""A dimensional-only model (issue 21.2): a corpus with attributes and no classes (an empty inventory, every
utt2emo '-') runs stages 2-5 with no emotion head and no CE term, and mtlser-infer prints attributes only; in
a corpus with both, utterances with no class ('-') are left out of the CE term (masked)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from mtlser.data.attributes import Attribute, write_declaration, write_values
from mtlser.data.datadir import read_table, validate_data_dir, write_table
from mtlser.data.emotions import NO_CLASS, NO_CLASS_INDEX
from mtlser.model.ser_model import masked_cross_entropy
from mtlser.text.phone_classes import PhoneClassMap, phncls_token_list
from mtlser.text.tokenize import write_token_list
from mtlser.utils import MtlserError
from tests.conftest import EMOTIONS

AV = [Attribute("arousal", 1, 7), Attribute("valence", 1, 7)]


def with_attributes(data, unclassed):
    """utt2attr on every utterance; utt2emo '-' where ``unclassed(i)`` (and an empty inventory if all are)."""
    utts = sorted(read_table(data / "utt2spk"))
    write_declaration(data, AV)
    write_values(data / "utt2attr", {u: [1 + i % 7, 2 + 3 * (i // 5 % 2)] for i, u in enumerate(utts)})
    emo = read_table(data / "utt2emo")
    write_table(data / "utt2emo", {u: NO_CLASS if unclassed(i) else emo[u] for i, u in enumerate(utts)})
    if all(unclassed(i) for i in range(len(utts))):
        (data / "emotions").write_text("")
    validate_data_dir(data, check_audio=False)
    return data


def test_attributes_only_runs_stages_2_to_5_and_infer_prints_attributes(make_data_dir, tmp_path, tiny_config,
                                                                           capsys):
    from mtlser.data.split import main as split_main
    from mtlser.infer.__main__ import main as infer_main
    from mtlser.score.__main__ import main as score_main
    from mtlser.train.__main__ import main as train_main

    data = with_attributes(make_data_dir(n_spk=4, n_utt=5, seconds=0.6), lambda i: True)
    assert split_main(["--data-dir", str(data), "--out", str(tmp_path / "loso"), "--valid-share", "0.25"]) == 0
    tokens = tmp_path / "tokens.txt"
    write_token_list(tokens, phncls_token_list(PhoneClassMap.load().classes, 0))
    config = tiny_config(loss={"lambda": 0.0, "attributes": True}, train={"epochs": 2})
    common = ["--config", str(config), "--folds-dir", str(tmp_path / "loso"), "--token-list", str(tokens),
              "--exp-dir", str(tmp_path / "exp")]
    # Selecting on the valid UA needs classes: the message names the fold's inventory and what to do.
    with pytest.raises(MtlserError, match=r"fold01/train/emotions: no classes, so no valid UA to select the epoch "
                                          r"on: use --train.select_metric ccc or loss"):
        train_main([*common, "--fold", "1"])
    # fold01's epoch is chosen on the valid CCC, fold02's on the valid loss
    for fold, metric in ((1, "ccc"), (2, "loss")):
        assert train_main([*common, "--fold", str(fold), "--train.select_metric", metric]) == 0
    exp = tmp_path / "exp" / "fold01"
    rows = [line.split("\t") for line in (exp / "history.tsv").read_text().splitlines()]
    ccc = [float(r[rows[0].index("valid_ccc")]) for r in rows[1:]]
    best = json.loads((exp / "best.json").read_text())
    assert len(ccc) == 2 and best["metric"] == "ccc" and best["epoch"] == 1 + ccc.index(max(ccc))
    assert best["ccc"] == pytest.approx(max(ccc), abs=1e-5)
    info = yaml.safe_load((exp / "model.yaml").read_text())
    assert info["emotions"] == [] and [a["name"] for a in info["attributes"]] == ["arousal", "valence"]
    from safetensors import safe_open
    with safe_open(str(exp / "best.safetensors"), "pt") as f:
        assert not any(k.startswith("emotion_head") for k in f.keys()) and "attr_head.linear.weight" in f.keys()
    header = (exp / "history.tsv").read_text().splitlines()[0].split("\t")
    assert "train_loss_attr" in header and "train_loss_ce" not in header and "valid_ua" not in header
    assert "valid_loss_attr" in header and "valid_ccc" in header and "valid_loss_ce" not in header

    for fold in ("fold01", "fold02"):  # stage 4: the recipe's decode of each fold
        assert infer_main(["--model-dir", str(tmp_path / "exp"), "--folds-dir", str(tmp_path / "loso"),
                           "--fold", fold[-1], "--no-progress"]) == 0
        decode = tmp_path / "exp" / fold / "decode_test"
        assert not (decode / "utt2emo_hyp").exists() and (decode / "utt2attr_hyp").is_file()
        assert score_main(["fold", str(decode)]) == 0
        res = json.loads((decode / "result.json").read_text())
        assert "wa" not in res and set(res["attributes"]["ccc"]) == {"arousal", "valence"}
        assert "CCC" in (decode / "result.txt").read_text() and "WA" not in (decode / "result.txt").read_text()
    assert score_main(["aggregate", str(tmp_path / "exp")]) == 0
    r = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert "wa" not in r and r["attributes"]["attributes"] == ["arousal", "valence"] and r["num_folds"] == 2
    md = (tmp_path / "exp" / "RESULTS.md").read_text()
    assert "### Attributes" in md and "|mean|CCC|" in md and "|WA|" not in md and "|fold02|Ses01M|5|" in md
    assert "- objective: L = 1 · L_attr (ccc) (λ = 0: no CTC head)" in md

    wav = read_table(tmp_path / "loso" / "fold01" / "test" / "wav.scp")
    capsys.readouterr()
    assert infer_main(["--model", str(exp), wav[sorted(wav)[0]], "--no-progress"]) == 0
    rec = json.loads(capsys.readouterr().out.splitlines()[0])
    assert set(rec["attributes"]) == {"arousal", "valence"} and "emotion" not in rec and "probs" not in rec
    assert infer_main(["--model", str(exp), wav[sorted(wav)[0]], "--format", "csv", "--no-progress"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split(",")
    assert "arousal" in header and "emotion" not in header
    with pytest.raises(MtlserError, match="--format utt2emo: this model has no classes"):
        infer_main(["--model", str(exp), wav[sorted(wav)[0]], "--format", "utt2emo", "--no-progress"])

    # Stage 6: each fold, the folds' ensemble and mtlser's wheel packed; the ensemble's zip infers attributes only.
    from mtlser.export.__main__ import main as export_main
    packed = tmp_path / "exp" / "packed"
    assert export_main(["pack", "--exp-dir", str(tmp_path / "exp"), "--out-dir", str(packed)]) == 0
    assert {p.name for p in packed.glob("*.zip")} == {"fold01.zip", "fold02.zip", "ensemble.zip"}
    import zipfile
    with zipfile.ZipFile(packed / "fold01.zip") as z:
        card, readme = json.loads(z.read("card.json")), z.read("README.md").decode()
    assert card["emotions"] == [] and card["test"]["attributes"]["attributes"] == ["arousal", "valence"]
    assert "wa" not in card["test"] and "wa" not in card["cross_validation"]
    assert "mean CCC" in readme and "WA" not in readme and "UA" not in readme and "by valid CCC" in readme
    with zipfile.ZipFile(packed / "ensemble.zip") as z:
        card, readme = json.loads(z.read("card.json")), z.read("README.md").decode()
    assert [a["name"] for a in card["attributes"]] == ["arousal", "valence"] and "WA" not in readme
    assert "attribute" in card["combine"] and "mean CCC" in readme
    capsys.readouterr()
    assert infer_main(["--model", str(packed / "ensemble.zip"), wav[sorted(wav)[0]], "--no-progress"]) == 0
    rec = json.loads(capsys.readouterr().out.splitlines()[0])
    assert set(rec["attributes"]) == {"arousal", "valence"} and "emotion" not in rec and "probs" not in rec
    # The ensemble's values: the mean of its members' (SERPredictor's averaging of attributes).
    from mtlser.infer import SERPredictor
    members = [SERPredictor.from_pretrained(packed / f"{f}.zip").predict_file(wav[sorted(wav)[0]])["attributes"]
               for f in ("fold01", "fold02")]
    for a in ("arousal", "valence"):
        assert rec["attributes"][a] == pytest.approx((members[0][a] + members[1][a]) / 2, abs=1e-5)
    assert infer_main(["--model", str(packed / "ensemble.zip"), wav[sorted(wav)[0]], "--format", "csv",
                       "--no-progress"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split(",")
    assert "arousal" in header and "valence" in header and "emotion" not in header
    # Neither transformers' audio classification nor the ONNX export carry a class-free model: one line each.
    onnx_why = (", and the ONNX graph is built around the emotion probabilities; use mtlser-infer or the pack "
                "for its attributes")
    for cmd, model, out, why in (
            ("hf", "fold01.zip", tmp_path / "hf", "; transformers' audio classification is categorical, so there is "
                                                  "nothing it could export; use mtlser-infer or the pack instead"),
            ("onnx", "fold01.zip", tmp_path / "m.onnx", onnx_why),
            ("onnx", "ensemble.zip", tmp_path / "m.onnx", onnx_why)):
        with pytest.raises(MtlserError) as e:
            export_main([cmd, "--model-dir", str(packed / model), "--out", str(out)])
        assert str(e.value).startswith(f"{packed / model}: has no classes, only an attribute head (arousal, "
                                       f"valence){why}") and "\n" not in str(e.value) and not out.exists()


def test_no_classes_needs_the_attribute_head_and_untagged_ctc(make_data_dir, tmp_path):
    from mtlser.config import Config, from_dict
    from mtlser.data.split import split
    from mtlser.train.build import build_data
    from tests.conftest import tiny_config_dict

    data = with_attributes(make_data_dir(n_spk=4, n_utt=5, seconds=0.6), lambda i: True)
    split(data, tmp_path / "loso", seed=0, valid_share=0.25)
    fold = tmp_path / "loso" / "fold01"
    cfg = from_dict(Config, tiny_config_dict(loss={"lambda": 0.0}), "test")
    with pytest.raises(MtlserError, match="no classes, so the model has attributes only: train with "
                                          "--loss.attributes true"):
        build_data(cfg, fold, [])
    cfg = from_dict(Config, tiny_config_dict(loss={"lambda": 0.1, "attributes": True},
                                             train={"select_metric": "loss"}), "test")
    with pytest.raises(MtlserError, match=r"emotion-tagged CTC targets are empty .*--emo-tag false"):
        build_data(cfg, fold, phncls_token_list(PhoneClassMap.load().classes, 0))
    (data / "utt2attr").unlink()
    (data / "attributes").unlink()
    with pytest.raises(MtlserError, match=r"emotions: empty \(no classes\) and no utt2attr"):
        validate_data_dir(data, check_audio=False)


def test_masked_cross_entropy_leaves_out_the_utterances_with_no_class():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    emotions = torch.tensor([0, NO_CLASS_INDEX, 2, 3, NO_CLASS_INDEX, 1])
    known = emotions >= 0
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    for weight in (None, w):
        loss, acc = masked_cross_entropy(logits, emotions, weight)
        assert float(loss) == pytest.approx(float(F.cross_entropy(logits[known], emotions[known], weight=weight)))
        assert float(acc) == pytest.approx(float((logits[known].argmax(-1) == emotions[known]).float().mean()))
    # A batch of unclassed utterances only: 0, not NaN (F.cross_entropy gives 0/0 there).
    none = torch.full((3,), NO_CLASS_INDEX)
    assert torch.isnan(F.cross_entropy(logits[:3], none))
    loss, acc = masked_cross_entropy(logits[:3].requires_grad_(), none, None)
    assert float(loss.detach()) == 0.0 and float(acc) == 0.0
    loss.backward()


def test_a_mixed_corpus_trains_with_the_unclassed_masked(make_data_dir, tmp_path):
    from mtlser.config import Config, from_dict
    from mtlser.data.split import split
    from mtlser.train.trainer import Trainer
    from tests.conftest import tiny_config_dict

    data = with_attributes(make_data_dir(n_spk=4, n_utt=6, seconds=0.5), lambda i: i % 3 == 0)
    split(data, tmp_path / "loso", seed=0, valid_share=0.25)
    tokens = phncls_token_list(PhoneClassMap.load().classes, len(EMOTIONS))
    cfg = from_dict(Config, tiny_config_dict(loss={"lambda": 0.0, "attributes": True}, train={"epochs": 1}), "test")
    t = Trainer(cfg, tmp_path / "loso" / "fold01", tokens, tmp_path / "exp")
    assert t.model.class_masking and NO_CLASS_INDEX in t.train_set.emotions
    t.model.eval()
    from mtlser.data.dataset import collate
    batch = collate([t.train_set[i] for i in range(len(t.train_set))])
    with torch.no_grad():
        _, stats, logits = t.model.loss_and_logits(**t.model_inputs(batch))
    known = batch["emotions"] >= 0
    assert stats["loss_ce"] == pytest.approx(float(F.cross_entropy(logits[known], batch["emotions"][known])),
                                             rel=1e-5)
    t.model.train()
    t.fit()
    history = t.history[-1]
    assert all(v == v for k, v in history.items() if isinstance(v, float))  # no NaN
    assert "valid_ua" in history and "valid_ccc" in history  # an attribute head: its valid CCC beside UA
    # Decoded and scored: WA/UA over the classed test utterances, the attributes over all of them.
    from mtlser.infer.__main__ import main as infer_main
    from mtlser.score.fold import score_fold
    test = tmp_path / "loso" / "fold01" / "test"
    assert infer_main(["--model", str(tmp_path / "exp"), "--data-dir", str(test), "--out",
                       str(tmp_path / "exp" / "decode_test"), "--no-progress"]) == 0
    ref = read_table(test / "utt2emo")
    res = score_fold(tmp_path / "exp" / "decode_test")
    classed = sum(1 for e in ref.values() if e != NO_CLASS)
    assert 0 < classed < len(ref) and res["n"] == classed and res["unclassed"] == len(ref) - classed
    assert sum(map(sum, res["confusion"])) == classed and set(res["attributes"]["ccc"]) == {"arousal", "valence"}
    text = (tmp_path / "exp" / "decode_test" / "result.txt").read_text()
    assert f"{len(ref) - classed} more with no class ('-')" in text


def test_select_metric_ccc_is_the_mean_valid_ccc_higher_better_and_needs_attributes():
    from types import SimpleNamespace

    import numpy as np

    from mtlser.config import Config, check_config, from_dict
    from mtlser.score.attributes import ccc, ccc_from_sums
    from mtlser.train.trainer import Trainer
    from tests.conftest import tiny_config_dict

    # The trainer's valid CCC (sums that ranks can add up) is the scorer's CCC, split in shares or not.
    rng = np.random.default_rng(0)
    x, y = rng.normal(3, 1, 40), rng.normal(4, 2, 40)
    y = y + 0.5 * x
    sums = lambda a, b: [len(a), a.sum(), b.sum(), (a * a).sum(), (b * b).sum(), (a * b).sum()]  # noqa: E731
    shares = np.add(sums(x[:15], y[:15]), sums(x[15:], y[15:]))
    assert ccc_from_sums(*shares) == pytest.approx(ccc(x, y), rel=1e-9) and 0 < ccc(x, y) < 1
    assert ccc_from_sums(0, 0, 0, 0, 0, 0) == 0.0

    cfg = from_dict(Config, tiny_config_dict(loss={"attributes": True}, train={"select_metric": "ccc"}), "test")
    check_config(cfg, "test")
    trainer = SimpleNamespace(cfg=cfg, best={"ccc": 0.2, "loss": 1.0})
    assert Trainer.is_better(trainer, {"ccc": 0.3, "loss": 2.0})  # higher CCC wins whatever the loss
    assert not Trainer.is_better(trainer, {"ccc": 0.1, "loss": 0.5})
    assert Trainer.is_better(trainer, {"ccc": 0.2, "loss": 0.5})  # tie: the lower loss
    # No attribute head, no CCC to select on: refused where the config is checked, saying what to set.
    cfg = from_dict(Config, tiny_config_dict(train={"select_metric": "ccc"}), "test")
    with pytest.raises(MtlserError, match=r"^test: train.select_metric = ccc selects on the attributes' valid CCC, "
                                          r"but loss.attributes = false trains no attribute head; set "
                                          r"loss.attributes: true \(data with utt2attr\) or another select_metric"):
        check_config(cfg, "test")


def test_an_ensemble_card_says_what_its_members_average_and_a_mixed_card_adds_the_attribute_cv():
    from mtlser.export.card import card_text
    from mtlser.export.pack import ensemble_combine

    av = [{"name": "arousal", "min": 1.0, "max": 7.0}]
    assert ensemble_combine({"emotions": ["ang", "neu"]}) == "mean of the members' emotion probabilities"
    assert ensemble_combine({"emotions": [], "attributes": av}) == "mean of the members' attribute values"
    both = ensemble_combine({"emotions": ["ang", "neu"], "attributes": av})
    assert both == "mean of the members' emotion probabilities and of their attribute values"
    spread = {"mean": 0.5, "std": 0.1, "ci": [0.1, 0.9]}
    cv = {"num_folds": 2, "n": 10, "wa": 0.5, "wa_std": 0.1, "ua": 0.4, "ua_std": 0.05, "seed": 0,
          "attributes": {"attributes": ["arousal"], "ccc": {"arousal": spread}, "mean_ccc": spread}}
    text = card_text({"name": "ensemble", "kind": "ensemble", "combine": both, "objective": "CE + 1 · L_attr (ccc)",
                      "emotions": ["ang", "neu"], "attributes": av, "members": [{"name": "fold01"}, {"name": "fold02"}],
                      "lambda": 0.1, "cross_validation": cv})
    assert f"an ensemble of 2 fold models; its output is the {both}." in text
    assert "| objective | CE + 1 · L_attr (ccc) + 0.1 · CTC" in text and "UA 40.0 ± 5.0 %" in text
    assert "\nAttributes (CCC, mean ± std over folds): arousal 0.500 ± 0.100; mean CCC 0.500 ± 0.100.\n" in text
