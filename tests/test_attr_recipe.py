"""Done-when of issue 21 (core): a data dir with classes and attributes trains a tiny model with an attribute
head, decodes (utt2attr_hyp), scores with macro-F1 and CCC, and mtlser-infer prints attributes."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import yaml

from mtlser.config import Config, from_dict
from mtlser.data.attributes import Attribute, write_declaration, write_values
from mtlser.data.datadir import read_table
from mtlser.data.split import split
from mtlser.text.phone_classes import PhoneClassMap, phncls_token_list
from tests.conftest import tiny_config_dict

AV = [Attribute("arousal", 1, 7), Attribute("valence", 1, 7)]


@pytest.fixture
def attr_folds(make_data_dir, tmp_path):
    data = make_data_dir(n_spk=4, n_utt=5, seconds=0.6)
    utts = sorted(read_table(data / "utt2spk"))
    write_declaration(data, AV)
    # arousal follows the utterance index, valence the speaker: values a model can fit in part
    write_values(data / "utt2attr", {u: [1 + i % 7, 2 + 3 * (j // 5 % 2)] for j, u in enumerate(utts)
                                     for i in [int(u[-3:])]})
    split(data, tmp_path / "loso", seed=0, valid_share=0.25)
    return tmp_path / "loso"


def test_classes_and_attributes_train_decode_score_and_infer(attr_folds, tmp_path, capsys):
    from mtlser.infer.__main__ import main as infer_main
    from mtlser.score.fold import score_fold
    from mtlser.train.trainer import Trainer

    tokens = phncls_token_list(PhoneClassMap.load().classes, 4)
    cfg = from_dict(Config, tiny_config_dict(loss={"lambda": 0.0, "attributes": True, "attr_loss": "ccc"},
                                             train={"epochs": 2}), "test")
    exp = tmp_path / "exp" / "fold01"
    Trainer(cfg, attr_folds / "fold01", tokens, exp).fit()
    info = yaml.safe_load((exp / "model.yaml").read_text())
    assert info["attributes"] == [{"name": "arousal", "min": 1.0, "max": 7.0},
                                  {"name": "valence", "min": 1.0, "max": 7.0}]

    test_dir = attr_folds / "fold01" / "test"
    assert infer_main(["--model", str(exp), "--data-dir", str(test_dir), "--out", str(exp / "decode_test"),
                       "--no-progress"]) == 0
    hyp = read_table(exp / "decode_test" / "utt2attr_hyp")
    assert set(hyp) == set(read_table(test_dir / "utt2spk"))
    assert all(len(v.split()) == 2 and all(1 <= float(x) <= 7 for x in v.split()) for v in hyp.values())

    res = score_fold(exp / "decode_test")
    assert 0 <= res["macro_f1"] <= 1 and 0 <= res["weighted_f1"] <= 1
    a = res["attributes"]
    assert set(a["ccc"]) == {"arousal", "valence"} and -1 <= a["mean_ccc"] <= 1
    assert a["mean_mae"] == pytest.approx(np.mean(list(a["mae"].values())))
    text = (exp / "decode_test" / "result.txt").read_text()
    assert "macro-F1" in text and "arousal" in text and "CCC" in text
    assert json.loads((exp / "decode_test" / "result.json").read_text())["attributes"]["ccc"] == a["ccc"]
    assert (exp / "decode_test" / "attr_scatter.png").stat().st_size > 1000

    wav = read_table(test_dir / "wav.scp")
    first = sorted(wav)[0]
    capsys.readouterr()
    assert infer_main(["--model", str(exp), wav[first], "--no-progress"]) == 0
    rec = json.loads(capsys.readouterr().out.splitlines()[0])
    assert set(rec["attributes"]) == {"arousal", "valence"} and rec["emotion"] in rec["probs"]
    assert infer_main(["--model", str(exp), wav[first], "--format", "csv", "--no-progress"]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert float(row["arousal"]) == pytest.approx(rec["attributes"]["arousal"], abs=1e-3)

    # the pack carries the declaration and states the attribute metrics; the HF export refuses the model
    from mtlser.export.hf import export_hf
    from mtlser.export.pack import pack
    from mtlser.infer.package import ModelFiles
    from mtlser.utils import MtlserError
    zip_path = pack(exp, tmp_path / "attr.zip")
    files = ModelFiles.open(zip_path)
    assert files.read_yaml("model.yaml")["attributes"] == info["attributes"]
    card = files.read_text("README.md")
    assert "arousal [1, 7], valence [1, 7]" in card and f"mean CCC {a['mean_ccc']:.3f}" in card
    assert infer_main(["--model", str(zip_path), wav[first], "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["attributes"] == rec["attributes"]
    pytest.importorskip("transformers")
    with pytest.raises(MtlserError, match=r"has an attribute head \(arousal, valence\); transformers' audio "
                                          r"classification is categorical"):
        export_hf(exp, tmp_path / "hf")
    # the ONNX graph carries the attribute head, checked with the probabilities (issue 22 item 1)
    pytest.importorskip("onnxruntime")
    from mtlser.export.onnx import TOLERANCE, export_onnx
    result = export_onnx(zip_path, tmp_path / "attr.onnx", check_data=str(test_dir))
    assert result["attributes"] == ["arousal", "valence"] and result["max_abs_diff"] <= TOLERANCE
    assert result["check_set"]["n"] > 0 and result["check_set"]["attributes_max_abs_diff_single"] <= TOLERANCE
    assert infer_main(["--model", str(tmp_path / "attr.onnx"), "--backend", "onnx", wav[first], "--no-progress"]) == 0
    got = json.loads(capsys.readouterr().out.splitlines()[0])["attributes"]
    assert got == pytest.approx(rec["attributes"], abs=1e-3)
