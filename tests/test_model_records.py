"""A model is reported as what it is (docs/robustness.md, "A reported model is what its files say"): a fold
whose training did not finish is refused by stages 4-6 or, when asked, reported with the epochs it ran;
a pack's files are checked against the digests its card records, and the emotion lists of model.yaml,
config.yaml and the card must agree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from mtlser.utils import MtlserError
from tests.conftest import write_wav
from tests.shipping import MINI_BACKBONE, random_model_dir

ROOT = Path(__file__).resolve().parents[1]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


# ----------------------------------------------------------------------------- an unfinished fold
@pytest.mark.slow
def test_stages_4_to_6_refuse_an_unfinished_fold_or_report_the_epochs_it_ran(tmp_path):
    from tests.test_recipe import make_recipe, ser

    recipe = make_recipe(tmp_path / "egs" / "mycorpus")
    common = ["--train-config", "conf/train_mini.yaml", "--nj", "1", "--folds", "1",
              "--local-data-opts", "--sessions 1 --utts-per-speaker 6"]
    r = ser(recipe, "--stage", "0", "--stop-stage", "3", *common,
            "--train-opts", "--train.epochs 2 --train.stop_after_epoch 1")  # as a preemption after epoch 1
    assert r.returncode == 0, r.stderr[-3000:]
    exp = recipe / "exp" / "train_mini_loso"
    fold = exp / "fold01"
    assert (fold / "best.safetensors").is_file()  # the best-so-far model that used to be reported

    r = ser(recipe, "--stage", "4", "--stop-stage", "6", *common)
    assert r.returncode != 0 and "Successfully finished" not in r.stderr
    refusal = ("exp/train_mini_loso/fold01: training did not finish (epoch 1 of 2); resume it with stage 3 "
               "(./run.sh --stage 3 with the same options, without train.stop_after_epoch), or pass "
               "--allow-unfinished (ser.sh: --allow-unfinished true) to report it as unfinished")
    log = (exp / "logs" / "decode.1.log").read_text()
    assert refusal in log and "Traceback" not in log
    assert not (fold / "decode_test").exists()
    # Stages 5 and 6 on their own refuse it the same way.
    for stage in ("5", "6"):
        r = ser(recipe, "--stage", stage, "--stop-stage", stage, *common)
        assert r.returncode != 0 and refusal in r.stderr, r.stderr[-3000:]
    assert not (exp / "RESULTS.md").exists() and not (exp / "packed").exists()

    # Asked for: reported with the epochs it really ran, marked unfinished.
    r = ser(recipe, "--stage", "4", "--stop-stage", "6", *common, "--allow-unfinished", "true")
    assert r.returncode == 0, r.stderr[-3000:]
    report = (exp / "RESULTS.md").read_text()
    assert ("- training: 2 epochs configured (train.epochs; trained: fold01 **unfinished, 1 of 2 epochs**), "
            "precision" in report)
    assert "|fold01 (unfinished, 1 of 2 epochs)|" in report and "**training did not finish** for fold01" in report
    assert json.loads((exp / "results.json").read_text())["folds"][0]["unfinished"] == "unfinished, 1 of 2 epochs"
    with zipfile.ZipFile(exp / "packed" / "fold01.zip") as z:
        card, readme = json.loads(z.read("card.json")), z.read("README.md").decode()
    assert card["unfinished"] == "unfinished, 1 of 2 epochs" and card["epochs_run"] == 1
    assert "**Training did not finish** (unfinished, 1 of 2 epochs)" in readme

    # The way out the refusal names: stage 3 resumes and finishes it; then nothing is marked.
    r = ser(recipe, "--stage", "3", "--stop-stage", "5", *common, "--train-opts", "--train.epochs 2")
    assert r.returncode == 0, r.stderr[-3000:]
    report = (exp / "RESULTS.md").read_text()
    assert "- training: 2 epochs, precision" in report and "unfinished" not in report
    assert "unfinished" not in json.loads((exp / "results.json").read_text())["folds"][0]


def test_finished_comes_from_the_trainers_record_and_early_stopping_is_finished(tmp_path):
    from mtlser import expdir

    d = tmp_path / "fold01"
    d.mkdir()
    (d / "env.json").write_text("{}\n")
    (d / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": 5, "patience": 2}, "loss": {"lambda": 0}}))
    t = expdir.read_training(d)  # killed in epoch 1: no history, no weights
    assert (t.epochs_run, t.epochs, t.finished) == (0, 5, False)
    history = "epoch\tstep\n" + "".join(f"{e}\t{10 * e}\n" for e in range(1, 4))
    (d / "history.tsv").write_text(history)
    (d / "best.safetensors").write_bytes(b"")
    (d / "best.json").write_text(json.dumps({"epoch": 3}))
    t = expdir.read_training(d)
    assert (t.epochs_run, t.finished, t.describe()) == (3, False, "unfinished, 3 of 5 epochs")
    with pytest.raises(MtlserError, match=r"fold01: training did not finish \(epoch 3 of 5\); resume it with stage 3"):
        expdir.check_finished(d)
    allowed = expdir.check_finished(d, allow_unfinished=True)
    assert (allowed.epochs_run, allowed.finished) == (3, False)
    (d / "best.json").write_text(json.dumps({"epoch": 1}))  # no improvement for 2 epochs: early stopping
    t = expdir.check_finished(d)
    assert t.finished and t.describe() == "stopped early after 3 of 5 epochs (train.patience)"
    from mtlser.score.report import experiment_setup

    assert ("- training: 5 epochs configured (train.epochs; trained: fold01 stopped early after 3 of 5 epochs "
            "(train.patience)), precision") in "\n".join(experiment_setup(tmp_path))
    # The final model's epoch count is never chosen by an unfinished fold.
    from mtlser.train.final import final_epochs

    (d / "best.json").write_text(json.dumps({"epoch": 3}))
    with pytest.raises(MtlserError, match=r"training did not finish \(epoch 3 of 5\); resume it with stage 3 "
                       r"\(\./run\.sh --stage 3 with the same options\)$"):
        final_epochs(tmp_path)
    # A model dir the trainer did not leave (made by hand, an unzipped pack) has no record: not judged.
    (d / "history.tsv").unlink()
    assert expdir.read_training(d) is None


# ----------------------------------------------------------------------------- a pack is what its files say
@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A model dir with random weights and its pack."""
    from mtlser.export.pack import pack

    root = tmp_path_factory.mktemp("packed")
    model = random_model_dir(root, MINI_BACKBONE)
    return model, pack(model, root / "model.zip"), write_wav(root / "a.wav", 0.5)


def rewrite(pack_path: Path, out: Path, **changes) -> Path:
    """A copy of a pack with members replaced: name (dots as _) -> function of the old bytes."""
    from mtlser.export.pack import write_zip

    with zipfile.ZipFile(pack_path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    for key, change in changes.items():
        name = key.replace("_", ".")
        entries[name] = change(entries[name])
    write_zip(out, list(entries.items()))
    return out


def reorder_emotions(data: bytes) -> bytes:
    info = yaml.safe_load(data)
    info["emotions"] = info["emotions"][::-1]  # the same layer shapes: it still loads, with other labels
    return yaml.safe_dump(info, sort_keys=False).encode()


def infer(model: Path, wav: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtlser.infer", "--model", str(model), str(wav), "--no-progress"],
                          env=env(), cwd=ROOT, capture_output=True, text=True)


def test_a_pack_records_its_files_digests_and_refuses_an_edited_file_naming_it(packed, tmp_path):
    import hashlib

    model, pack_path, wav = packed
    with zipfile.ZipFile(pack_path) as z:
        card = json.loads(z.read("card.json"))
        digests = {n: hashlib.sha256(z.read(n)).hexdigest() for n in z.namelist() if n not in ("card.json",
                                                                                                "README.md")}
    assert card["files_sha256"] == digests
    assert set(digests) == {"model.yaml", "config.yaml", "token_list", "model.safetensors"}
    r = infer(pack_path, wav)
    assert r.returncode == 0 and "unchecked" not in r.stderr, r.stderr[-2000:]
    # model.yaml's emotions reordered after packing: the labels would change silently.
    edited = rewrite(pack_path, tmp_path / "edited.zip", model_yaml=reorder_emotions)
    r = infer(edited, wav)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert (f"{edited}:model.yaml: changed since it was packed (sha256 "
            f"{hashlib.sha256(reorder_emotions(zipfile.ZipFile(pack_path).read('model.yaml'))).hexdigest()[:12]}…, "
            f"the pack's card.json records {digests['model.yaml'][:12]}…); re-pack the model from its training dir "
            "(python -m mtlser.export pack), or use an unchanged copy of the pack") in r.stderr
    # The same checks on an unzipped pack, the weights included (read there by path, not through the zip).
    unzipped = tmp_path / "unzipped"
    with zipfile.ZipFile(pack_path) as z:
        z.extractall(unzipped)
    from mtlser.infer import SERPredictor

    SERPredictor.from_pretrained(unzipped)
    weights = bytearray((unzipped / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (unzipped / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(MtlserError, match=r"unzipped/model\.safetensors: changed since it was packed"):
        SERPredictor.from_pretrained(unzipped)


def test_disagreeing_emotion_lists_are_refused_with_the_three_lists(packed, tmp_path, caplog):
    from mtlser.infer import SERPredictor

    model, pack_path, wav = packed
    # A pack written before digests: loads as it did, with a warning that says to re-pack it.
    def no_digests(data: bytes) -> bytes:
        card = json.loads(data)
        del card["files_sha256"]
        return json.dumps(card).encode()

    old = rewrite(pack_path, tmp_path / "old.zip", card_json=no_digests)
    caplog.set_level("WARNING")
    assert SERPredictor.from_pretrained(old).emotions == ["ang", "hap", "sad", "neu"]
    assert "packed without file digests" in caplog.text and "re-pack it" in caplog.text
    # Such a pack with model.yaml's emotions reordered: nothing to check the file against, but the lists disagree.
    edited = rewrite(old, tmp_path / "old_edited.zip", model_yaml=reorder_emotions)
    r = infer(edited, wav)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert (f"{edited}: the emotion lists disagree: {edited}:model.yaml ['neu', 'sad', 'hap', 'ang'], "
            f"{edited}:config.yaml data.emotions ['ang', 'hap', 'sad', 'neu'], {edited}:card.json "
            "['ang', 'hap', 'sad', 'neu']; the labels would follow model.yaml: restore the edited file, or re-pack "
            "the model from its training dir (python -m mtlser.export pack)") in r.stderr
    # A training dir has no card: model.yaml and config.yaml must agree.
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    (copy / "model.yaml").write_bytes(reorder_emotions((copy / "model.yaml").read_bytes()))
    with pytest.raises(MtlserError, match=r"the emotion lists disagree: .*model\.yaml \['neu', 'sad', 'hap', 'ang'\], "
                       r".*config\.yaml data\.emotions \['ang', 'hap', 'sad', 'neu'\], no card\.json"):
        SERPredictor.from_pretrained(copy)
