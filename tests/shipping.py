"""Small finished experiments for the inference and export tests, made in-process in seconds.

``make_experiment`` builds what stages 0-5 leave behind on a tiny corpus: a recipe dir with
``data/loso/foldNN/{train,valid,test}`` and ``exp/<tag>/foldNN`` model dirs trained for a few steps,
decoded and scored, and the experiment's ``results.json``. ``random_model_dir`` writes a model dir of
any architecture with random, non-trivial weights (fusion weights far from uniform), untrained.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import yaml

from mtlser.config import load_config
from mtlser.data.datadir import DataDir, write_table
from mtlser.data.split import split
from mtlser.text.tokenize import write_token_list
from tests.conftest import tiny_config_dict, write_wav

ROOT = Path(__file__).resolve().parents[1]
EMOTIONS = ["ang", "hap", "sad", "neu"]
TOKENS = ["<blank>"] + [f"{c}{i}" for i in range(4) for c in ("S", "F", "N", "L", "V", "Vs")]

#: The mini recipe's backbone, read from its config (pre-LN, group-norm CNN of 4 layers).
MINI_BACKBONE = yaml.safe_load((ROOT / "conf" / "train_mini.yaml").read_text())["backbone"]
#: wav2vec2-base's shape at toy width: its 7-layer CNN (kernels and strides), post-LN, group norm.
BASE_SHAPED_BACKBONE = {
    "arch": "wav2vec2", "init": None, "size": "custom",
    "custom": {"extractor_mode": "group_norm",
               "extractor_conv_layer_config": [[16, 10, 5]] + [[16, 3, 2]] * 4 + [[16, 2, 2]] * 2,
               "encoder_embed_dim": 32, "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 4,
               "encoder_num_layers": 3, "encoder_num_heads": 2, "encoder_ff_interm_features": 64,
               "encoder_layer_norm_first": False},
    "dropout": 0.1, "attention_dropout": 0.1, "projection_dropout": 0.1,
}


def make_corpus(root: Path, n_spk: int = 3, n_utt: int = 4, seconds: float = 0.8) -> Path:
    """A stage-1 data dir (all) with emotion-tagged class targets; the audio under root/wav."""
    tables = {k: {} for k in ("wav.scp", "text", "utt2spk", "utt2emo", "utt2dur", "utt2session", "text_phncls")}
    rng = np.random.default_rng(0)
    for s in range(n_spk):
        spk = f"Ses{s // 2 + 1:02d}{'FM'[s % 2]}"
        for i in range(n_utt):
            utt = f"{spk}_dlg_{'FM'[s % 2]}{i:03d}"
            dur = seconds + 0.1 * i
            wav = write_wav(root / "wav" / f"{utt}.wav", dur, seed=s * 100 + i)
            emo = (s + i) % 4
            tables["wav.scp"][utt] = str(wav)
            tables["text"][utt] = "hello world"
            tables["utt2spk"][utt] = spk
            tables["utt2emo"][utt] = EMOTIONS[emo]
            tables["utt2dur"][utt] = f"{dur:.4f}"
            tables["utt2session"][utt] = spk[:5]
            tables["text_phncls"][utt] = " ".join(f"{c}{emo}" for c in rng.choice(["S", "F", "N", "L", "V", "Vs"], 6))
    DataDir(tables, emotions=EMOTIONS).write(root / "data" / "all")
    return root / "data" / "all"


def experiment_config(backbone: dict, **sections):
    cfg = tiny_config_dict(**sections)
    cfg["backbone"] = copy.deepcopy(backbone)
    return load_config(None, cfg)


def make_experiment(root: Path, backbone: dict = MINI_BACKBONE, n_spk: int = 3, epochs: int = 1,
                    tag: str = "train_tiny_loso", **sections) -> Path:
    """A recipe dir ``root`` after stages 0-5 on a tiny corpus (every fold trained ``epochs``); returns the exp dir."""
    from mtlser.infer import SERPredictor
    from mtlser.infer.decode import decode_data_dir
    from mtlser.score.aggregate import aggregate
    from mtlser.score.fold import score_fold
    from mtlser.train.trainer import Trainer

    data = make_corpus(root, n_spk=n_spk)
    write_token_list(root / "data" / "token_list" / "phncls" / "tokens.txt", TOKENS)
    folds = root / "data" / "loso"
    split(data, folds, seed=0, valid_share=0.25)
    exp = root / "exp" / tag
    cfg = experiment_config(backbone, train={"epochs": epochs}, optim={"lr": 5e-3}, **sections)
    for f in sorted(folds.glob("fold[0-9]*")):
        Trainer(cfg, f, TOKENS, exp / f.name).fit()
        decode = exp / f.name / "decode_test"
        decode_data_dir(SERPredictor.from_pretrained(exp / f.name), f / "test", decode, progress=False)
        score_fold(decode)
    aggregate(exp)
    return exp


def random_model_dir(root: Path, backbone: dict, name: str = "model", seed: int = 0, attributes: list | None = None,
                     **sections) -> Path:
    """A model dir (the files stage 3 writes) with random weights: fusion logits ~ N(0, 1), heads ~ N(0, 0.5).

    ``attributes`` (mtlser.data.attributes.Attribute's): with an attribute head (loss.attributes on, values drawn
    on each scale), its unit outputs centred (bias 0.5) so that its values are not clamped to the scale's ends."""
    from mtlser.train.trainer import Trainer

    data = root / f"{name}_data"
    if attributes:
        sections["loss"] = {**sections.get("loss", {}), "attributes": True}
    if not (data / "train").is_dir():
        all_dir = make_corpus(data, n_spk=2, n_utt=2)
        if attributes:
            from mtlser.data.attributes import write_declaration, write_values

            rng = np.random.default_rng(seed)
            write_declaration(all_dir, attributes)
            write_values(all_dir / "utt2attr", {u: [float(rng.uniform(a.low, a.high)) for a in attributes]
                                                for u in sorted((all_dir / "utt2spk").read_text().split()[::2])})
        for split_name in ("train", "valid"):
            (data / split_name).symlink_to(all_dir, target_is_directory=True)
    torch.manual_seed(seed)
    cfg = experiment_config(backbone, **sections)
    trainer = Trainer(cfg, data, TOKENS if cfg.loss.lambda_ > 0 else ["<blank>"], root / name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model = trainer.model
        if model.fusion is not None:
            model.fusion.logits.copy_(torch.randn(model.fusion.logits.shape, generator=g))
        model.emotion_head.weight.copy_(0.5 * torch.randn(model.emotion_head.weight.shape, generator=g))
        model.emotion_head.bias.copy_(0.5 * torch.randn(model.emotion_head.bias.shape, generator=g))
        if model.attr_head is not None:
            model.attr_head.linear.weight.copy_(0.02 * torch.randn(model.attr_head.linear.weight.shape, generator=g))
            model.attr_head.linear.bias.fill_(0.5)
    trainer.write_model_files()
    trainer.save_best()
    return root / name


def write_scp(path: Path, table: dict[str, str]) -> Path:
    write_table(path, table)
    return path
