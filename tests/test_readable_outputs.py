"""Outputs that read well (issue 19.6), each through the command line: stage 5's console table with its
header, the card's protocol / valid / selection lines, mtlser-infer's --per-window CSV, failures once."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mtlser.infer.audio import windows
from tests.conftest import ROOT, TINY_BACKBONE
from tests.test_score_reports import make_exp


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env)


def log_messages(stderr: str) -> list[str]:
    """The messages of the log lines, without their time and source prefix."""
    return [line.split(" INFO: ", 1)[1] for line in stderr.splitlines() if " INFO: " in line]


def test_stage5_console_table_has_its_header(tmp_path):
    exp = make_exp(tmp_path, "train_mtl_loso", 0.1, [0.7, 0.8, 0.9], [0.6, 0.8, 0.7])
    r = cli("-m", "mtlser.score", "aggregate", str(exp))
    assert r.returncode == 0, r.stderr
    assert log_messages(r.stderr) == [
        f"{exp}: WA and UA in % over 3 folds (75 test utterances), from {exp}/RESULTS.md:",
        "  metric  mean over folds  std over folds  pooled  std over seeds          95 % CI  chance",
        "  WA                80.00           10.00   76.00               —  [55.16, 104.84]   28.00",
        "  UA                70.00           10.00   76.19               —   [45.16, 94.84]   25.00",
    ]
    # The console shows RESULTS.md's own cells (pooled UA = mean of 15/18, 15/18, 12/18, 15/21).
    md = (exp / "RESULTS.md").read_text()
    assert "|WA|80.00|10.00|76.00|—|[55.16, 104.84]|28.00|" in md


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tests.shipping import random_model_dir

    return random_model_dir(tmp_path_factory.mktemp("model"), TINY_BACKBONE)


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(3)
    sf.write(d / "short_call.wav", 0.1 * rng.standard_normal(16000).astype(np.float32), 16000)  # 1 s: one window
    sf.write(d / "meeting.wav", 0.1 * rng.standard_normal(56000).astype(np.float32), 16000)  # 3.5 s: windows
    sf.write(d / "blip.wav", np.zeros(20, np.float32), 16000)  # shorter than the CNN's receptive field
    return d


def infer(model, *args: str) -> subprocess.CompletedProcess:
    return cli("-m", "mtlser.infer", "--model", str(model), "--no-progress", *args)


def test_per_window_csv_has_a_row_per_window_and_each_failure_is_reported_once(model, audio, tmp_path):
    inputs = [str(audio / n) for n in ("short_call.wav", "meeting.wav", "blip.wav")] + [str(tmp_path / "gone.wav")]
    r = infer(model, *inputs, "--window", "2", "--hop", "1", "--per-window", "--output", str(tmp_path / "w.csv"))
    assert r.returncode == 3, r.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "w.csv").read_text())))
    emotions = [k[2:] for k in rows[0] if k.startswith("p_")]
    assert list(rows[0]) == ["id", "file", "start", "end", "emotion", *[f"p_{e}" for e in emotions], "error"]
    spans = windows(3.5, 2.0, 1.0)
    assert len(spans) == 3
    assert [(Path(r_["id"]).name, r_["start"], r_["end"]) for r_ in rows] == [
        ("short_call.wav", "0.0000", "1.0000"),
        *[("meeting.wav", f"{a:.4f}", f"{b:.4f}") for a, b in spans],
        ("blip.wav", "", ""), ("gone.wav", "", "")]
    assert rows[-1]["error"] == "not found" and rows[-2]["error"].startswith("too short: 20 samples")
    # The windows are the ones jsonl lists for the same run.
    j = infer(model, *inputs[:2], "--window", "2", "--hop", "1")
    call, meeting = map(json.loads, j.stdout.splitlines())
    for row, w in zip(rows[1:4], meeting["windows"]):
        assert row["emotion"] == w["emotion"]
        assert [float(row[f"p_{e}"]) for e in emotions] == pytest.approx([w["probs"][e] for e in emotions], abs=1e-6)
    assert float(rows[0][f"p_{emotions[0]}"]) == pytest.approx(call["probs"][emotions[0]], abs=1e-6)
    # Each failure once on stderr (the error records are in the CSV), then the count.
    lines = [line for line in r.stderr.splitlines() if "blip.wav" in line or "gone.wav" in line]
    assert [line.split(") ", 1)[1] for line in lines] == [
        f"ERROR: {audio / 'blip.wav'}: {rows[-2]['error']}", f"ERROR: {tmp_path / 'gone.wav'}: not found"]
    assert r.stderr.rstrip().endswith(f"INFO: labelled 2 of 4 recordings into {tmp_path / 'w.csv'}")


def test_per_window_needs_csv(model, audio):
    r = infer(model, str(audio / "meeting.wav"), "--per-window")
    assert r.returncode == 1
    assert r.stderr.strip().split(" ERROR: ", 1)[1] == (
        "--per-window gives CSV rows, but the output format is jsonl; use --format csv (or an --output ending in "
        ".csv); jsonl already lists each recording's windows")


def fold_model(root: Path, selection: dict, protocol: dict[str, str]) -> Path:
    """exp/t/fold01 as stages 2-4 leave it, with the valid split and the epoch rule given."""
    from mtlser import expdir
    from mtlser.data.datadir import write_table
    from tests.shipping import random_model_dir

    fold = random_model_dir(root / "exp" / "t", TINY_BACKBONE, name="fold01")
    folds_dir = root / "data" / protocol["protocol"]
    (folds_dir / "fold01" / "test").mkdir(parents=True)
    write_table(folds_dir / expdir.PROTOCOL, protocol)
    (fold / expdir.DECODE_TEST).mkdir()
    (fold / expdir.DECODE_TEST / expdir.DATA_DIR_POINTER).write_text(f"{folds_dir / 'fold01' / 'test'}\n")
    (fold / expdir.BEST_JSON).write_text(json.dumps({"epoch": 4, **selection}))
    (fold / expdir.HISTORY_TSV).write_text("epoch\ttrain_time_s\n" + "".join(f"{i}\t2.0\n" for i in range(1, 7)))
    return fold


@pytest.mark.parametrize("selection, protocol, rows", [
    ({"selection": "valid", "metric": "ua"}, {"protocol": "loso", "valid": "share", "valid_share": "0.1", "seed": "3"},
     ["| fold protocol (stage 2) | loso |",
      "| valid split (stage 2) | share (10% of each training speaker, seed 3) |",
      "| epoch selection (stage 3) | the best epoch by valid UA (the valid split: training speakers only): epoch 4 "
      "of 6 |"]),
    ({"selection": "last"}, {"protocol": "kfold5", "valid": "none", "valid_share": "0.1", "seed": "0"},
     ["| fold protocol (stage 2) | kfold5 |",
      "| valid split (stage 2) | none |",
      "| epoch selection (stage 3) | the last epoch (train.model_selection last: nothing selected; a valid split is "
      "trained on): epoch 4 of 6 |"]),
])
def test_card_separates_protocol_valid_split_and_epoch_selection(tmp_path, selection, protocol, rows):
    import zipfile

    fold = fold_model(tmp_path, selection, protocol)
    r = cli("-m", "mtlser.export", "pack", "--model-dir", str(fold), "--out", str(tmp_path / "fold01.zip"))
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(tmp_path / "fold01.zip") as z:
        readme = z.read("README.md").decode().splitlines()
        card = json.loads(z.read("card.json"))
    start = readme.index(f"| corpus | {tmp_path.name} |") + 1  # the recipe dir holding data/
    assert readme[start:start + 3] == rows
    assert card["protocol"] == protocol["protocol"] and card["epoch_selection"] == selection


def test_stage1_counts_utterances_without_ctc_tokens_per_reason_and_names_the_first(make_data_dir, tmp_path):
    """Issue 19.3: utterances left with no CTC tokens are counted per reason, the first few named."""
    from mtlser.data.datadir import read_table

    data = make_data_dir(n_spk=1, n_utt=16, text="hello world this is a test")
    text = read_table(data / "text")
    u = sorted(text)
    text[u[0]] = ""
    text[u[1]], text[u[2]] = "[LAUGHTER]", "[BREATHING] <noise>"
    for i in range(3, 10):
        text[u[i]] = "?!" if i % 2 else "--"
    text[u[10]] = "Привет"  # another script: G2P reads a-z only
    text[u[11]] = "123"  # a number: G2P says it, char has no unit for it
    (data / "text").write_text("".join(f"{k} {v}\n" for k, v in sorted(text.items())))

    r = cli("-m", "mtlser.text.tokenize", "--data-dir", str(data), "--token-list-dir", str(tmp_path / "tl"))
    assert r.returncode == 0, r.stderr
    messages = log_messages(r.stderr)
    summary = next(i for i, m in enumerate(messages) if "text_phncls for 16 utterances" in m)
    assert messages[summary].endswith("; 11 with no tokens keep their emotion label and train without the CTC term, "
                                      "by reason:")
    assert messages[summary + 1:] == [
        f"  1 with an empty transcript: {u[0]}",
        f"  2 with only non-verbal tags ([LAUGHTER] ...): {u[1]} {u[2]}",
        f"  7 with only punctuation: {' '.join(u[3:8])} ... (2 more in text_phncls, empty lines)",
        f"  1 with no letters a-z for G2P (another script? --token-type char or bpe reads any): {u[10]}",
    ]
    empty = {k for k, v in read_table(data / "text_phncls", allow_empty_value=True).items() if not v}
    assert empty == set(u[:11])

    r = cli("-m", "mtlser.text.tokenize", "--data-dir", str(data), "--token-list-dir", str(tmp_path / "tl"),
            "--token-type", "char")
    assert r.returncode == 0, r.stderr
    lines = [m for m in log_messages(r.stderr) if m.startswith("  ")]
    assert lines[-1] == f"  1 with no letters (digits only: char units are letters): {u[11]}"
    assert len(lines) == 4  # Привет is letters to char


def test_stage6_puts_the_wheel_of_the_training_mtlser_beside_the_packs_and_it_installs_alone(tmp_path):
    """Issue 19.5: packed/mtlser-<version>-py3-none-any.whl, named by the cards, installs with --no-deps into a
    fresh venv, where ``import mtlser`` is the wheel's."""
    import zipfile

    import mtlser
    from mtlser import expdir
    from mtlser.export.card import CPU_TORCH_INSTALL, KNOWN_TORCH_PAIRS
    from tests.shipping import random_model_dir

    exp = tmp_path / "exp" / "t"
    fold = random_model_dir(exp, TINY_BACKBONE, name="fold01")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = head.stdout.strip() if head.returncode == 0 else None
    env = json.loads((fold / expdir.ENV_JSON).read_text())
    if commit:  # trained at a clean commit git has: the wheel is that commit's mtlser, whatever the tree holds now
        env.update(git_commit=commit, git_dirty=False)
        (fold / expdir.ENV_JSON).write_text(json.dumps(env))
    r = cli("-m", "mtlser.export", "pack", "--exp-dir", str(exp), "--out-dir", str(exp / "packed"))
    assert r.returncode == 0, r.stderr
    whl = exp / "packed" / f"mtlser-{mtlser.__version__}-py3-none-any.whl"
    assert sorted(p.name for p in (exp / "packed").iterdir()) == ["fold01.zip", whl.name]
    if commit:
        assert f"built {whl} from the mtlser at the training commit {commit}" in r.stderr
        shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:mtlser/infer/output.py"],
                               capture_output=True, text=True).stdout
        with zipfile.ZipFile(whl) as z:
            assert z.read("mtlser/infer/output.py").decode() == shown
    with zipfile.ZipFile(exp / "packed" / "fold01.zip") as z:
        readme = z.read("README.md").decode()
        card = json.loads(z.read("card.json"))
    assert f"    {CPU_TORCH_INSTALL}   # no GPU: torch's CPU wheels, not the CUDA libraries\n" in readme
    assert f"\n    pip install {whl.name}\n" in readme and card["wheel"]["file"] == whl.name
    assert "torch / torchaudio pairs known to work: " + ", ".join(f"{t} / {a}" for t, a in KNOWN_TORCH_PAIRS) in readme
    # The README states the same pairs (the card's constant is their one owner in code).
    assert all(f"{t}/{a}" in (ROOT / "README.md").read_text() for t, a in KNOWN_TORCH_PAIRS)

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                        "--no-deps", "--no-index", "--disable-pip-version-check", "--quiet", str(whl)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import mtlser; print(mtlser.__version__, mtlser.__file__)"],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    version, where = r.stdout.split()
    assert version == mtlser.__version__ and Path(where).is_relative_to(venv)
    assert (venv / "bin" / "mtlser-infer").is_file()
