"""Shipping a model: packs with their cards, ensembles of fold models, stage 6, export to transformers."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mtlser.data.datadir import read_table
from mtlser.export.__main__ import main as export_main
from mtlser.export.hf import export_hf, probe_signals
from mtlser.export.pack import make_ensemble, pack
from mtlser.infer import SERPredictor
from mtlser.utils import MtlserError, run_main
from tests.shipping import BASE_SHAPED_BACKBONE, random_model_dir

ROOT = Path(__file__).resolve().parents[1]
#: The issue's bar for transformers vs mtlser probabilities.
HF_TOLERANCE = 1e-4


def fold_test_audio(fold_dir: Path) -> list[np.ndarray]:
    """The audio of a fold's test set (what stage 4 decoded), as arrays."""
    data_dir = Path((fold_dir / "decode_test" / "data_dir").read_text().strip())
    return [sf.read(p, dtype="float32")[0] for _, p in sorted(read_table(data_dir / "wav.scp").items())]


def test_pack_holds_the_model_and_an_honest_card(tiny_experiment, tmp_path):
    fold = tiny_experiment / "fold01"
    out = pack(fold, tmp_path / "fold01.zip")
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == ["README.md", "card.json", "config.yaml", "model.safetensors", "model.yaml",
                                        "token_list"]
        card = json.loads(z.read("card.json"))
        readme = z.read("README.md").decode()
    result = json.loads((fold / "decode_test" / "result.json").read_text())
    results = json.loads((tiny_experiment / "results.json").read_text())
    env = json.loads((fold / "env.json").read_text())
    assert card["kind"] == "fold" and card["corpus"] == "recipe" and card["protocol"] == "loso"
    assert card["emotions"] == ["ang", "hap", "sad", "neu"]
    assert card["test"]["wa"] == result["wa"] and card["test"]["speakers"] == result["speakers"]
    assert card["cross_validation"]["ua"] == results["ua"] and card["cross_validation"]["ua_std"] == results["ua_std"]
    assert card["git_commit"] == env["git_commit"] and card["mtlser_version"]
    assert card["training_time_s"] > 0 and card["epochs_run"] == 1 and card["training_hardware"]
    assert f"WA {100 * result['wa']:.1f} %" in readme and "mean ± std over folds" in readme
    # Deterministic (same model, same bytes) and readable by others (umask, not mkstemp's 0600).
    again = pack(fold, tmp_path / "again.zip")
    assert out.read_bytes() == again.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()
    # The pack is a model: same answers as the training dir.
    wavs = fold_test_audio(fold)
    np.testing.assert_allclose(SERPredictor.from_pretrained(out).predict_arrays(wavs)[0],
                               SERPredictor.from_pretrained(fold).predict_arrays(wavs)[0], atol=1e-7)


def _umask() -> int:
    from mtlser.utils.fileio import current_umask

    return current_umask()


def test_safetensors_files_get_the_umask_mode_not_0600(tiny_experiment, tmp_path):
    import torch

    from mtlser.utils.fileio import atomic_save_safetensors

    # Training wrote best.safetensors through the same helper.
    assert stat.S_IMODE((tiny_experiment / "fold01" / "best.safetensors").stat().st_mode) == 0o666 & ~_umask()
    old = os.umask(0o027)
    try:
        atomic_save_safetensors(tmp_path / "w.safetensors", {"a": torch.arange(3.0)}, {"epoch": "1"})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o640
    from safetensors import safe_open

    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        assert f.metadata() == {"epoch": "1"} and f.get_tensor("a").tolist() == [0.0, 1.0, 2.0]
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_pack_out_naming_a_directory_is_one_line(tiny_experiment, tmp_path, capsys):
    (tmp_path / "packs").mkdir()
    args = ["pack", "--model-dir", str(tiny_experiment / "fold01"), "--out", str(tmp_path / "packs")]
    assert run_main(export_main, args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{tmp_path / 'packs'}: a directory; --out names the .zip file to write" in err
    assert os.listdir(tmp_path / "packs") == []


def test_pack_refuses_a_model_that_does_not_load(tiny_experiment, tmp_path):
    broken = tmp_path / "fold09"
    shutil.copytree(tiny_experiment / "fold01", broken)
    data = (broken / "best.safetensors").read_bytes()
    (broken / "best.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(MtlserError, match="best.safetensors: truncated or corrupt"):
        pack(broken, tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()
    # The same weights inside a pack, and a pickle where safetensors belongs: one line each, nothing unpickled.
    good = pack(tiny_experiment / "fold01", tmp_path / "good.zip")
    with zipfile.ZipFile(good) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    from mtlser.export.pack import write_zip

    for name, weights in (("half.zip", data[: len(data) // 2]), ("pickle.zip", b"\x80\x04K\x01.")):
        write_zip(tmp_path / name, [(n, weights if n == "model.safetensors" else b) for n, b in entries.items()])
        with pytest.raises(MtlserError, match=rf"{name}:model.safetensors: (truncated or corrupt|a pickle)"):
            SERPredictor.from_pretrained(tmp_path / name)


def test_ensemble_averages_the_fold_models_and_packs(tiny_experiment, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(tiny_experiment, exp, symlinks=True)
    ens = make_ensemble(exp)
    assert ens == exp / "ensemble"
    wavs = fold_test_audio(exp / "fold01")
    members = [SERPredictor.from_pretrained(exp / f) for f in ("fold01", "fold02", "fold03")]
    mean = np.mean([m.predict_arrays(wavs)[0] for m in members], axis=0)
    ensemble = SERPredictor.from_pretrained(ens)
    probs, tokens = ensemble.predict_arrays(wavs)
    np.testing.assert_allclose(probs, mean, atol=1e-6)
    assert ensemble.emotions == members[0].emotions and tokens is not None and len(tokens) == len(wavs)
    zipped = pack(ens, tmp_path / "ensemble.zip")
    with zipfile.ZipFile(zipped) as z:
        names = set(z.namelist())
        card = json.loads(z.read("card.json"))
        readme = z.read("README.md").decode()
    assert {"ensemble.yaml", "members/fold01/model.safetensors", "members/fold03/token_list"} <= names
    assert card["kind"] == "ensemble" and [m["name"] for m in card["members"]] == ["fold01", "fold02", "fold03"]
    assert "test" not in card and "No held-out figure" in readme and "has not been measured" in readme
    np.testing.assert_allclose(SERPredictor.from_pretrained(zipped).predict_arrays(wavs)[0], mean, atol=1e-6)


def test_stage6_packs_every_fold_the_final_model_and_the_ensemble(tiny_experiment, tmp_path):
    import mtlser
    from tests.test_recipe import make_recipe, ser

    recipe = make_recipe(tmp_path / "egs" / "mycorpus")
    shutil.copytree(tiny_experiment.parent.parent / "data", recipe / "data")
    exp = recipe / "exp" / "train_tiny_loso"
    shutil.copytree(tiny_experiment, exp)
    final = exp / "final"  # what training on every speaker leaves (issue 10): a plain model dir
    shutil.copytree(exp / "fold02", final, ignore=shutil.ignore_patterns("decode_test"))
    r = ser(recipe, "--stage", "6", "--tag", "train_tiny_loso", "--train-config", "conf/train_mini.yaml")
    assert r.returncode == 0, r.stderr[-3000:]
    packed = sorted(p.name for p in (exp / "packed").iterdir())
    wheel = f"mtlser-{mtlser.__version__}-py3-none-any.whl"  # the mtlser that trained them (issue 19.5)
    assert packed == ["ensemble.zip", "final.zip", "fold01.zip", "fold02.zip", "fold03.zip", wheel]
    with zipfile.ZipFile(exp / "packed" / "final.zip") as z:
        card, readme = json.loads(z.read("card.json")), z.read("README.md").decode()
    assert card["kind"] == "final" and card["corpus"] == "mycorpus" and "test" not in card
    assert card["protocol"] == "loso"  # from the experiment's folds: the final model has no test set
    assert card["wheel"]["file"] == wheel and card["valid_split"].startswith("none (every utterance trained on")
    assert "| valid split (stage 2) | none (every utterance trained on, for the folds' median epoch: " \
        "final_epochs.json) |" in readme
    with zipfile.ZipFile(exp / "packed" / "ensemble.zip") as z:
        assert len(json.loads(z.read("card.json"))["members"]) == 3  # the folds, not final/


# ----------------------------------------------------------------------------- Hugging Face
def pipeline_probs(hf_dir: Path, wavs: list[np.ndarray]) -> np.ndarray:
    from transformers import pipeline

    classify = pipeline("audio-classification", model=str(hf_dir), top_k=None)
    labels = json.loads((hf_dir / "config.json").read_text())["id2label"]
    order = [labels[str(i)] for i in range(len(labels))]
    out = []
    for wav in wavs:
        scores = {r["label"]: r["score"] for r in classify(wav)}
        out.append([scores[e] for e in order])
    return np.array(out)


def test_hf_pipeline_gives_mtlser_probabilities_on_the_fold_test_files(tiny_experiment, tmp_path):
    """The mini recipe's model shape (pre-LN encoder, softmax fusion, group-norm CNN), trained a few steps."""
    fold = tiny_experiment / "fold01"
    packed = pack(fold, tmp_path / "fold01.zip")
    assert run_main(export_main, ["hf", "--model-dir", str(packed), "--out", str(tmp_path / "hf")]) == 0
    wavs = fold_test_audio(fold)
    ours = SERPredictor.from_pretrained(fold).predict_arrays(wavs)[0]
    assert np.abs(pipeline_probs(tmp_path / "hf", wavs) - ours).max() <= HF_TOLERANCE
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2ForSequenceClassification"] and config["do_stable_layer_norm"]
    assert config["label2id"] == {"ang": 0, "hap": 1, "sad": 2, "neu": 3}
    report = json.loads((tmp_path / "hf" / "mtlser_export.json").read_text())
    assert report["max_abs_diff_single"] <= 1e-5 and "not exact" in report["padded_batches"]
    readme = (tmp_path / "hf" / "README.md").read_text()
    assert "Padded batches (pipeline with batch_size > 1): not exact" in readme
    assert ("`classify('clip.wav')` (a file name) works only where ffmpeg is installed: the pipeline decodes files "
            "with it.") in readme
    assert "mtlser-infer labels recordings longer than 20 s in windows (20 s, hop " in readme
    # save_pretrained's safetensors (0600 from the library) get the umask's mode like every other file.
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in (tmp_path / "hf").iterdir()} == {
        p.name: oct(0o666 & ~_umask()) for p in (tmp_path / "hf").iterdir()}


@pytest.mark.parametrize("arch,normalize", [("wav2vec2", False), ("wav2vec2", True), ("hubert", False),
                                            ("wavlm", False)])
def test_hf_export_of_a_tiny_random_base_shaped_model(tmp_path, arch, normalize):
    backbone = dict(BASE_SHAPED_BACKBONE, arch=arch, normalize_waveform=normalize)
    model_dir = random_model_dir(tmp_path, backbone, name=f"{arch}_model")
    report = export_hf(model_dir, tmp_path / "hf")
    prep = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert prep["do_normalize"] is normalize and prep["sampling_rate"] == 16000 and prep["return_attention_mask"]
    predictor = SERPredictor.from_pretrained(model_dir)
    wavs = probe_signals(16000, predictor.min_samples, seed=3) + [0.01 * w for w in probe_signals(16000, 400, 4)]
    ours = np.concatenate([predictor.predict_arrays([w])[0] for w in wavs])
    assert np.abs(pipeline_probs(tmp_path / "hf", wavs) - ours).max() <= HF_TOLERANCE
    assert report["max_abs_diff_single"] <= 1e-5
    assert np.abs(ours - ours.mean(0)).max() > 1e-3  # the model is not a constant: the check can fail


def test_hf_export_refuses_what_transformers_cannot_reproduce(tiny_experiment, tmp_path, monkeypatch):
    import mtlser.export.hf as hf

    # A transformers that fuses the pre-LN encoder's last state before its final layer norm (5.x without the
    # config switch): the export must refuse and leave nothing behind.
    original = hf.hf_config

    def untied(model, meta):
        config = original(model, meta)
        config.tie_last_hidden_states = False
        return config

    monkeypatch.setattr(hf, "hf_config", untied)
    with pytest.raises(MtlserError, match="pre-LN encoder") as e:
        hf.export_hf(tiny_experiment / "fold01", tmp_path / "hf")
    assert "Nothing was written" in str(e.value) and not (tmp_path / "hf").exists()
    monkeypatch.setattr(hf, "hf_config", original)
    # An ensemble is several networks.
    exp = tmp_path / "exp"
    shutil.copytree(tiny_experiment, exp)
    assert run_main(export_main, ["hf", "--model-dir", str(make_ensemble(exp)), "--out", str(tmp_path / "e")]) == 1
    assert not (tmp_path / "e").exists()


def test_hf_export_without_transformers_says_what_to_install(tiny_experiment, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(MtlserError, match=r"pip install 'mtlser\[hf\]'"):
        export_hf(tiny_experiment / "fold01", tmp_path / "hf")


def test_readme_inference_section_runs_as_written(tiny_experiment, tmp_path, monkeypatch, capsys):
    """Every command and the Python snippet of README's "Using a trained model", on this test's experiment in
    the mini recipe's place (after stage 6). The first command runs in a fresh process with `mtlser-infer` as
    pip installs it; the others through the same entry points in this process (each fresh process costs a
    torch import)."""
    import shlex

    from mtlser.export.pack import pack_experiment
    from mtlser.infer.__main__ import main as infer_main

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Using a trained model"):]
    section = section[: section.index("\n## ", 4)]
    blocks = [b for b in section.split("\n\n") if b.startswith("    ")]
    shell = [line.strip() for b in blocks for line in b.splitlines()
             if line.strip().startswith(("mtlser-infer ", "python -m mtlser"))]
    python = [b for b in blocks if b.lstrip().startswith("from mtlser")]
    assert len(shell) >= 5 and shell[0].startswith("mtlser-infer ") and len(python) == 1
    work = tmp_path / "work"
    exp = work / "egs" / "mini" / "exp" / "train_mini_loso"
    shutil.copytree(tiny_experiment, exp)
    pack_experiment(exp, exp / "packed")  # stage 6
    (work / "recordings").mkdir()
    for i, w in enumerate(fold_test_audio(tiny_experiment / "fold01")):
        sf.write(work / "recordings" / f"r{i}.wav", w, 16000)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MTLSER", "VIRTUAL_ENV", "NLTK"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PATH=f"{_console_scripts(tmp_path)}:{env['PATH']}")
    r = subprocess.run(shell[0], shell=True, cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{shell[0]}\n{r.stderr[-2000:]}"
    assert len((work / "labels.jsonl").read_text().splitlines()) == len(list((work / "recordings").iterdir()))
    monkeypatch.chdir(work)
    entry = {"mtlser-infer": infer_main, "mtlser.infer": infer_main, "mtlser.export": export_main}
    for cmd in shell[1:]:
        argv = shlex.split(cmd)
        name, args = (argv[0], argv[1:]) if argv[0] == "mtlser-infer" else (argv[2], argv[3:])
        assert run_main(entry[name], args) == 0, f"{cmd}\n{capsys.readouterr().err[-2000:]}"
    assert (work / "labels.csv").is_file() and (work / "fold01.zip").is_file()
    assert (work / "hf_fold01" / "config.json").is_file()
    code = "\n".join(line[4:] for line in python[0].splitlines())
    exec(compile(code, "README.md", "exec"), {})
    assert "['ang', 'hap', 'sad', 'neu']" in capsys.readouterr().out


def _console_scripts(tmp_path: Path) -> Path:
    """A stand-in for the `mtlser-infer` script that `pip install .` makes from pyproject.toml."""
    import tomllib

    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["mtlser-infer"]
    module, func = target.split(":")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "mtlser-infer"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
    script.chmod(0o755)
    return bin_dir
