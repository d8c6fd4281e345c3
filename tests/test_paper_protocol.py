"""The paper's protocol: no valid set, every training utterance trains, the last epoch's model is reported;
per-epoch weights loadable by inference and scoring; curves, TensorBoard and logs a user can read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from mtlser.config import load_config
from mtlser.data.datadir import read_table, write_table
from mtlser.data.split import split
from mtlser.text.phone_classes import PhoneClassMap, phncls_token_list
from mtlser.text.tokenize import write_token_list
from mtlser.utils import MtlserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def corpus(make_data_dir, tmp_path):
    """A 4-speaker corpus with phone-class targets; returns (data dir, token list)."""
    data = make_data_dir(n_spk=4, n_utt=6, seconds=0.8)
    write_token_list(tmp_path / "token_list", phncls_token_list(PhoneClassMap.load().classes, 4))
    write_random_phncls(data)
    return data, tmp_path / "token_list"


def write_random_phncls(data):
    """Eight random emotion-tagged phone-class tokens per utterance as ``text_phncls`` (seeded, so fixed)."""
    emo = read_table(data / "utt2emo")
    idx = {"ang": 0, "hap": 1, "sad": 2, "neu": 3}
    g = torch.Generator().manual_seed(0)
    classes = ["S", "F", "N", "L", "V", "Vs"]
    write_table(data / "text_phncls", {u: " ".join(f"{classes[int(i)]}{idx[emo[u]]}"
                                                   for i in torch.randint(0, 6, (8,), generator=g)) for u in emo})


def test_valid_none_split_and_final_data(corpus, tmp_path):
    data, _ = corpus
    out = tmp_path / "loso"
    split(data, out, valid="share", valid_share=0.25)
    assert (out / "fold01/valid/utt2emo").is_file()
    # --valid none over the same dir: the old valid set is gone, not left to be trained on by mistake.
    rows = split(data, out, valid="none")
    all_utts = set(read_table(data / "utt2emo"))
    for i, row in enumerate(rows, 1):
        fold = out / f"fold{i:02d}"
        assert not (fold / "valid").exists() and row["valid"] == 0
        train, test = set(read_table(fold / "train/utt2emo")), set(read_table(fold / "test/utt2emo"))
        assert train | test == all_utts and not train & test  # every non-test utterance trains
    assert read_table(out / "protocol")["valid"] == "none"
    # The final model's data: every speaker.
    assert set(read_table(out / "final/train/utt2emo")) == all_utts
    assert not (out / "final/test").exists() and not (out / "final/valid").exists()


def fit(config, data_dir, tokens, exp_dir):
    from mtlser.train.trainer import Trainer

    trainer = Trainer(load_config(config), data_dir, tokens.read_text().split(), exp_dir)
    trainer.fit()
    return trainer


def test_last_trains_on_valid_too_same_as_no_valid_split(corpus, tiny_config, tmp_path, caplog):
    """model_selection last on a fold with a valid set trains on train + valid: the same run as --valid none."""
    data, tokens = corpus
    split(data, tmp_path / "share", valid="share", valid_share=0.25)
    split(data, tmp_path / "none", valid="none")
    config = tiny_config(train={"epochs": 1, "model_selection": "last", "tensorboard": False})
    with caplog.at_level("INFO"):
        merged = fit(config, tmp_path / "share/fold01", tokens, tmp_path / "exp_share")
    assert "train.model_selection last: no model selection, so" in caplog.text
    plain = fit(config, tmp_path / "none/fold01", tokens, tmp_path / "exp_none")
    assert merged.train_set.utts == plain.train_set.utts
    assert merged.train_set.utts == sorted(read_table(tmp_path / "none/fold01/train/utt2emo"))
    a = (tmp_path / "exp_share/best.safetensors").read_bytes()
    assert a == (tmp_path / "exp_none/best.safetensors").read_bytes()
    assert json.loads((tmp_path / "exp_none/best.json").read_text())["epoch"] == 1


def test_selection_on_valid_needs_a_valid_set(corpus, tiny_config, tmp_path):
    data, tokens = corpus
    split(data, tmp_path / "none", valid="none")
    with pytest.raises(MtlserError, match="valid: missing, and train.model_selection valid picks the epoch on it"):
        fit(tiny_config(train={"model_selection": "valid"}), tmp_path / "none/fold01", tokens, tmp_path / "exp")


def test_config_refuses_patience_without_a_metric(tiny_config):
    with pytest.raises(MtlserError, match="train.patience = 3 stops on a valid metric"):
        load_config(tiny_config(train={"model_selection": "last", "patience": 3}))


def test_paper_configs_run_the_paper_protocol_in_fp32():
    for name in ("train_mtl", "train_single", "train_mtl_frozen_cnn"):
        cfg = load_config(ROOT / "conf" / f"{name}.yaml")
        assert cfg.train.model_selection == "last" and cfg.train.precision == "fp32", name
    ours = load_config(ROOT / "conf/train_mtl_select_valid.yaml")
    assert ours.train.model_selection == "valid" and ours.train.precision == "fp32"


def test_curves_are_redrawn_every_epoch(corpus, tiny_config, tmp_path):
    """train_curves.png exists after epoch 1, before the run ends, with the reported epoch so far."""
    from mtlser.train.trainer import Trainer, TrainerCallback

    data, tokens = corpus
    split(data, tmp_path / "share", valid="share", valid_share=0.25)
    cfg = load_config(tiny_config(train={"epochs": 2, "tensorboard": False}))
    token_list = (tokens).read_text().split()
    png = tmp_path / "exp/fold01/train_curves.png"
    seen = []

    class Spy(TrainerCallback):
        def on_epoch_start(self, trainer):
            seen.append(png.is_file())

    trainer = Trainer(cfg, tmp_path / "share/fold01", token_list, tmp_path / "exp" / "fold01", callbacks=[Spy()])
    trainer.fit()
    assert seen == [False, True]
    assert len(trainer.history) == 2 and "valid_loss_ce" in trainer.history[0]


def test_final_model_epochs_are_the_median_of_the_folds(tmp_path):
    from mtlser.train.final import final_epochs

    exp = tmp_path / "exp"
    for i, epoch in enumerate([3, 5, 8, 4], 1):
        (exp / f"fold{i:02d}").mkdir(parents=True)
        (exp / f"fold{i:02d}/best.json").write_text(json.dumps({"epoch": epoch, "selection": "valid"}))
    record = final_epochs(exp)
    assert record["epochs"] == 5 and record["median"] == 4.5  # rounded half up
    assert json.loads((exp / "final/final_epochs.json").read_text())["folds"]["fold03"] == 8
    (exp / "fold05").mkdir()
    with pytest.raises(MtlserError, match="fold05/best.json: missing; the final model's epoch count comes from"):
        final_epochs(exp)


@pytest.mark.slow
def test_recipe_valid_none_sweep_with_mean_ctc_and_final_model(corpus, tiny_config, tmp_path):
    """Stages 2-5 as the issue asks: --valid none trains fold 1 on every non-test utterance and reports the last
    epoch; the lambda sweep runs with a mean CTC reduction (lambda 0 shared); --train-final trains on everyone."""
    from tests.test_recipe import make_recipe, ser

    data, tokens = corpus
    recipe = make_recipe(tmp_path / "egs" / "x")
    (recipe / "data").mkdir()
    os.symlink(data, recipe / "data" / "all")
    (recipe / "data/token_list/phncls").mkdir(parents=True)
    (recipe / "data/token_list/phncls/tokens.txt").write_text(tokens.read_text())
    config = tiny_config()
    r = ser(recipe, "--stage", "2", "--stop-stage", "5", "--valid", "none", "--folds", "1", "--train-final", "true",
            "--lambdas", "0 0.1", "--ctc-reduction", "mean", "--train-config", str(config),
            "--train-opts", "--train.epochs 2 --train.keep_epoch_checkpoints true")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    folds = recipe / "data/loso_novalid"
    assert not (folds / "fold01/valid").exists()
    n_train = len(read_table(folds / "fold01/train/utt2emo"))
    assert n_train + len(read_table(folds / "fold01/test/utt2emo")) == len(read_table(data / "utt2emo"))
    exps = {"tiny_loso_novalid_lambda0": 0.0, "tiny_loso_novalid_ctcmean_lambda0.1": 0.1}
    for name, lam in exps.items():
        exp = recipe / "exp" / name
        cfg = yaml.safe_load((exp / "fold01/config.yaml").read_text())
        assert cfg["loss"]["lambda"] == lam and cfg["train"]["model_selection"] == "last"
        if lam:
            assert cfg["loss"]["ctc_reduction"] == "mean"
        best = json.loads((exp / "fold01/best.json").read_text())
        assert best["epoch"] == 2 and best["selection"] == "last"  # epoch 2's model is the fold's
        log = (exp / "fold01/train.log").read_text()
        assert f"train: {n_train} utterances" in log and "valid: none (the last epoch is reported)" in log
        assert "epoch 1/2: " in log and "epoch 2/2: " in log  # what the launcher's bar and ETA follow
        assert "\r" not in log
        assert "the last epoch's model reported" in (exp / "RESULTS.md").read_text()
        assert "\r" not in (exp / "logs/train.1.log").read_text()
        # The model to ship: all speakers, the folds' epoch count (2), its own normal model dir.
        final = exp / "final"
        assert json.loads((final / "final_epochs.json").read_text())["epochs"] == 2
        assert json.loads((final / "best.json").read_text())["epoch"] == 2
        assert f"train: {len(read_table(data / 'utt2emo'))} utterances" in (final / "train.log").read_text()
        from mtlser.infer import SERPredictor

        assert SERPredictor.from_pretrained(final).predict_batch([torch.randn(8000).numpy() * 0.1])[0]["emotion"]
    table = (recipe / "exp/tiny_loso_novalid_ctcmean_lambdas.md").read_text()
    assert "|tiny_loso_novalid_lambda0|0|— (no CTC)|" in table and "|phncls (mean)|" in table

    # Every epoch's weights were kept; best.safetensors is epoch 2's; epoch 1's go through inference and scoring.
    from safetensors.torch import load_file

    d = recipe / "exp/tiny_loso_novalid_ctcmean_lambda0.1/fold01"
    best, last, first = (load_file(str(d / f)) for f in ("best.safetensors", "epoch2.safetensors",
                                                          "epoch1.safetensors"))
    assert all(torch.equal(best[k], last[k]) for k in best) and any(not torch.equal(first[k], last[k]) for k in first)
    from mtlser.infer.__main__ import main as infer_main
    from mtlser.score.__main__ import main as score_main
    from mtlser.utils import run_main

    dec = d / "decode_test_epoch1"
    assert run_main(infer_main, ["--model-dir", str(d), "--data-dir", str(folds / "fold01/test"), "--out", str(dec),
                                 "--weights", "epoch1.safetensors"]) == 0
    assert run_main(score_main, ["fold", str(dec)]) == 0
    assert json.loads((dec / "result.json").read_text())["n"] == len(read_table(folds / "fold01/test/utt2emo"))

    # TensorBoard: a scalar per epoch under the fold dir.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(d / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss_ce")] == [1, 2]
    assert {"train/loss_ctc", "train/acc", "lr/heads", "lr/backbone"} <= set(events.Tags()["scalars"])
