"""loss.class_weighting balanced (issue 21.2): CE weights from the training set's class counts, computed when
training starts, recorded in the fold's config.yaml and checkpoint, and in the loss the model trains on."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
import yaml

from mtlser.config import Config, from_dict
from mtlser.data.datadir import read_table, write_table
from mtlser.data.dataset import collate
from mtlser.data.split import split
from mtlser.model.heads import balanced_class_weights
from mtlser.text.phone_classes import PhoneClassMap, phncls_token_list
from mtlser.text.tokenize import write_token_list
from mtlser.utils import MtlserError
from tests.conftest import EMOTIONS, tiny_config_dict


@pytest.fixture
def unbalanced_folds(make_data_dir, tmp_path):
    data = make_data_dir(n_spk=4, n_utt=6, seconds=0.5)
    emo = read_table(data / "utt2emo")
    # Two thirds 'ang', the rest spread over the others: counts a balanced CE reweighs.
    write_table(data / "utt2emo", {u: EMOTIONS[0] if i % 3 else EMOTIONS[i // 3 % len(EMOTIONS)]
                                   for i, u in enumerate(sorted(emo))})
    split(data, tmp_path / "loso", seed=0, valid_share=0.25)
    return tmp_path / "loso"


def test_balanced_weights_from_the_training_counts_are_recorded(unbalanced_folds, tmp_path, tiny_config):
    from mtlser.train.__main__ import main

    tokens = tmp_path / "tokens.txt"
    write_token_list(tokens, phncls_token_list(PhoneClassMap.load().classes, len(EMOTIONS)))
    config = tiny_config(loss={"lambda": 0.0})
    assert main(["--config", str(config), "--folds-dir", str(unbalanced_folds), "--fold", "1",
                 "--token-list", str(tokens), "--exp-dir", str(tmp_path / "exp"),
                 "--train-opts", "--train.epochs 1 --loss.class_weighting balanced"]) == 0
    counts = Counter(read_table(unbalanced_folds / "fold01" / "train" / "utt2emo").values())
    want = balanced_class_weights([counts[e] for e in EMOTIONS])
    assert len(set(want)) > 1  # the fixture is unbalanced
    saved = yaml.safe_load((tmp_path / "exp" / "fold01" / "config.yaml").read_text())["loss"]
    assert saved["class_weighting"] == "balanced" and saved["class_weights"] == pytest.approx(want)
    state = torch.load(tmp_path / "exp" / "fold01" / "checkpoint.pt", weights_only=True)
    assert json.loads(state["config"])["loss"]["class_weights"] == pytest.approx(want)


def test_the_weights_reach_the_loss_and_change_it(unbalanced_folds, tmp_path):
    from mtlser.train.trainer import Trainer

    tokens = phncls_token_list(PhoneClassMap.load().classes, len(EMOTIONS))
    losses = {}
    for weighting in ("none", "balanced"):
        cfg = from_dict(Config, tiny_config_dict(loss={"lambda": 0.0, "class_weighting": weighting}), "test")
        t = Trainer(cfg, unbalanced_folds / "fold01", tokens, tmp_path / weighting)
        t.model.eval()
        batch = collate([t.train_set[i] for i in range(len(t.train_set))])
        with torch.no_grad():
            loss, _, logits = t.model.loss_and_logits(**t.model_inputs(batch))
        losses[weighting] = (float(loss), logits, batch["emotions"], cfg.loss.class_weights)
    plain, balanced = losses["none"], losses["balanced"]
    assert plain[3] is None
    assert torch.equal(plain[1], balanced[1])  # the same seed, the same model: only the weights differ
    w = torch.tensor(balanced[3])
    assert balanced[0] == pytest.approx(float(F.cross_entropy(balanced[1], balanced[2], weight=w)), rel=1e-5)
    assert plain[0] == pytest.approx(float(F.cross_entropy(plain[1], plain[2])), rel=1e-5)
    assert abs(balanced[0] - plain[0]) > 1e-4


def test_weights_given_and_balanced_disagreeing_are_refused(unbalanced_folds, tmp_path):
    from mtlser.train.build import build_data

    cfg = from_dict(Config, tiny_config_dict(loss={"lambda": 0.0, "class_weighting": "balanced",
                                                   "class_weights": [1.0, 1.0, 1.0, 1.0]}), "test")
    with pytest.raises(MtlserError, match=r"loss.class_weights \[1.0, 1.0, 1.0, 1.0\] and loss.class_weighting "
                                          r"balanced .* are both set; give one of them"):
        build_data(cfg, unbalanced_folds / "fold01", [])
    with pytest.raises(MtlserError, match="loss.class_weighting = 'yes'; expected one of none, balanced"):
        from mtlser.config import check_config
        check_config(from_dict(Config, tiny_config_dict(loss={"class_weighting": "yes"}), "test"))
