"""The job launcher, option parsing, install idempotence, and the mini corpus generator."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtlser.corpora.mini_corpus import generate

ROOT = Path(__file__).resolve().parents[1]


def launch(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "mtlser.launch", *args], capture_output=True, text=True,
                          env=env, cwd=cwd)


def test_launcher_runs_the_array_and_frames_logs(tmp_path):
    r = launch("--max-jobs-run", "2", "JOB=1:3", str(tmp_path / "log" / "job.JOB.log"),
               sys.executable, "-c", "import sys; print('job', sys.argv[1])", "JOB")
    assert r.returncode == 0, r.stderr
    for j in (1, 2, 3):
        text = (tmp_path / "log" / f"job.{j}.log").read_text()
        assert text.startswith("# ") and f"job {j}\n" in text and "# Ended (code 0)" in text


def test_launcher_reports_failed_jobs(tmp_path):
    r = launch("JOB=1:3", str(tmp_path / "job.JOB.log"), sys.executable, "-c",
               "import sys; sys.exit(3 if sys.argv[1] == '2' else 0)", "JOB")
    assert r.returncode == 1
    assert "1 of 3 jobs failed" in r.stderr and "job.2.log" in r.stderr
    assert "# Ended (code 3)" in (tmp_path / "job.2.log").read_text()


def test_nth_fold_maps_job_to_fold(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "mtlser.launch.nth_fold", "2,5,7", "3", "echo", "--fold", "FOLD"],
                       capture_output=True, text=True, env=env)
    assert r.stdout.strip() == "--fold 7"


def test_parse_options(tmp_path):
    script = tmp_path / "s.sh"
    script.write_text(
        "stage=0\nuse_gpu=false\nname=x\n"
        f". {ROOT}/egs/TEMPLATE/utils/parse_options.sh\n"
        'echo "$stage $use_gpu $name $#"\n')
    run = lambda *a: subprocess.run(["bash", str(script), *a], capture_output=True, text=True)  # noqa: E731
    assert run("--stage", "3", "--use-gpu", "true", "--name=a b").stdout.strip() == "3 true a b 0"
    assert run("--stage", "2", "pos").stdout.strip() == "2 false x 1"
    r = run("--use-gpu", "yes")
    assert r.returncode != 0 and "takes true or false" in r.stderr
    r = run("--nmae", "y")
    assert r.returncode != 0 and "invalid option --nmae" in r.stderr


def test_install_is_a_fast_no_op_when_up_to_date():
    # The suite runs inside an installed venv, so the stamp must match and nothing be reinstalled.
    r = subprocess.run([str(ROOT / "tools" / "install.sh"), "--with-test"], capture_output=True, text=True)
    assert r.returncode == 0 and "installing into" not in r.stderr


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _generate(out: Path, seed: int) -> None:
    # A fresh process each time, as the recipe does (espeak-ng keeps state within a process).
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "mtlser.corpora.mini_corpus", "--out", str(out), "--seed", str(seed),
                        "--sessions", "3", "--utts-per-speaker", "3"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr


def test_mini_corpus_is_deterministic_and_in_iemocap_layout(tmp_path):
    # Three sessions: their voices include breathy ones (en+f2, en+f3), whose noise must be seeded too.
    _generate(tmp_path / "a", 5)
    _generate(tmp_path / "b", 5)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    _generate(tmp_path / "c", 6)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    root = tmp_path / "a" / "Session1"
    assert sorted(p.name for p in (root / "dialog" / "EmoEvaluation").glob("*.txt"))
    wavs = sorted((root / "sentences" / "wav").rglob("Ses01*_*.wav"))
    assert len(wavs) == 6
    import soundfile as sf

    info = sf.info(wavs[0])
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    summary = json.loads((tmp_path / "a" / "README.mtlser.json").read_text())
    assert sum(summary["label_counts"].values()) == 18
    # Same settings again: nothing is regenerated.
    mtime = wavs[0].stat().st_mtime_ns
    generate(tmp_path / "a", seed=5, n_sessions=3, utts_per_speaker=3)
    assert wavs[0].stat().st_mtime_ns == mtime


def test_local_jobs_of_several_gpus_take_them_in_groups():
    """--gpu 2 (ser.sh --ngpu 2) with --gpus 0,1,2,3: the job in slot 1 sees GPUs 0,1, slot 2 sees 2,3."""
    from mtlser.launch.jobs import job_env

    assert [job_env(s, 2, ["0", "1", "2", "3"], base={}, per_job=2)["CUDA_VISIBLE_DEVICES"] for s in (1, 2)] == [
        "0,1", "2,3"]
    assert job_env(3, 4, ["0", "1"], base={}, per_job=1)["CUDA_VISIBLE_DEVICES"] == "0"


@pytest.mark.slurm
def test_slurm_backend(tmp_path, slurm):
    """The launcher's array on the local Slurm (tools/start_slurm.sh): job 3 fails, and is named."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **slurm)
    r = subprocess.run([sys.executable, "-m", "mtlser.launch", "--backend", "slurm", "--max-jobs-run", "2",
                        "JOB=1:3", str(tmp_path / "log" / "j.JOB.log"),
                        "python", "-c", "import sys; sys.exit(3 if sys.argv[1] == '3' else 0)", "JOB"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 1 and "1 of 3 jobs failed" in r.stderr and "j.3.log" in r.stderr, r.stderr
    assert "failed (exit 3); see " + str(tmp_path / "log" / "j.3.log") in r.stderr
    assert "# Ended (code 0)" in (tmp_path / "log" / "j.1.log").read_text()
