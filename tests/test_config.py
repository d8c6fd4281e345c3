"""Config: every shipped YAML loads, fields are documented, overrides and errors."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from mtlser.config import Config, describe, load_config, parse_overrides, save_config
from mtlser.utils import MtlserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "conf").glob("train_*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.data.emotions is None  # the classes come from the data's inventory (stage 0)


def test_paper_config_is_the_paper():
    cfg = load_config(ROOT / "conf" / "train_mtl.yaml")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adam", 5e-5, 1e-5)
    assert (cfg.data.batch_size, cfg.train.epochs, cfg.loss.lambda_) == (16, 100, 0.1)
    assert (cfg.backbone.size, cfg.backbone.freeze_feature_encoder, cfg.backbone.mask_time_prob) == ("base", False, 0.0)
    assert cfg.model.fusion == "softmax" and cfg.backbone.layer_drop == 0.0
    assert load_config(ROOT / "conf" / "train_single.yaml").loss.lambda_ == 0.0


def leaf_fields(cls=Config):
    """Every field of the config that is not a section, with its type: (field, type)."""
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from leaf_fields(tp)
        else:
            yield f, tp


def test_every_field_is_documented_once():
    fields = [f for f, _ in leaf_fields()]
    assert fields
    undocumented = [f.name for f in fields if len(f.metadata.get("doc", "")) < 10]
    assert not undocumented
    assert any(line.startswith("loss.lambda ") for line in describe())


def test_overrides():
    over = parse_overrides(["--loss.lambda", "0", "--optim.lr=1e-4", "--backbone.init", "null",
                            "--data.emotions", "[ang, neu]", "--backbone.custom.encoder_num_layers", "3"])
    assert over == {"loss": {"lambda": 0}, "optim": {"lr": "1e-4"}, "backbone": {"init": None,
                    "custom": {"encoder_num_layers": 3}}, "data": {"emotions": ["ang", "neu"]}}
    cfg = load_config(ROOT / "conf" / "train_mini.yaml", ["--optim.lr", "1e-4", "--backbone.custom.encoder_num_layers", "3"])
    assert cfg.optim.lr == 1e-4
    # A nested override changes one key and keeps the rest of the YAML's mapping.
    assert cfg.backbone.custom["encoder_num_layers"] == 3 and cfg.backbone.custom["encoder_embed_dim"] == 64


def test_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(MtlserError, match=r"bad.yaml: unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\)$"):
        load_config(bad)
    bad.write_text("train:\n  epochs: many\n")
    with pytest.raises(MtlserError, match=r"bad.yaml: train.epochs = 'many'; expected an integer$"):
        load_config(bad)
    bad.write_text("loss:\n  ctc_reduction: avg\n")
    with pytest.raises(MtlserError, match="loss.ctc_reduction = 'avg'; expected one of"):
        load_config(bad)
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(MtlserError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(MtlserError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "conf" / "train_mini.yaml", ["--loss.lambda", "0.5"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert "lambda: 0.5" in (tmp_path / "config.yaml").read_text()
