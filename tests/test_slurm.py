"""The Slurm backend: conf/slurm.conf, the job script, and the recipe on a real (local) Slurm.

The tests marked ``slurm`` submit to the single-node Slurm that tools/start_slurm.sh starts
on localhost (the ``slurm`` fixture finds it from the file that script leaves); without one
they are skipped, and in CI they fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtlser.utils import MtlserError
from mtlser.launch.slurm import job_script, read_settings, sbatch_options
from tests.test_recipe import make_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_slurm_conf_sets_every_stage_and_overrides_per_stage(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("# cluster\npartition=gpu\naccount = lab  # ours\ntime=\ncpus=2\nmem=8G\n"
                    "train.cpus=8\ntrain.mem=32G\ntrain.gres=gpu:a100:{ngpu}\ndecode.partition=cpu\n"
                    "extra=--qos=high --comment='two words'\n")
    train = sbatch_options(read_settings(conf, "train"), ngpu=2)
    assert train == ["--export=NONE", "--requeue", "--partition=gpu", "--account=lab", "--cpus-per-task=8",
                     "--mem=32G", "--gres=gpu:a100:2", "--qos=high", "--comment=two words"]
    decode = sbatch_options(read_settings(conf, "decode"), ngpu=0)
    assert decode == ["--export=NONE", "--requeue", "--partition=cpu", "--account=lab", "--cpus-per-task=2",
                      "--mem=8G", "--qos=high", "--comment=two words"]
    # No gres given: gpu:N for jobs with GPUs, nothing for jobs without.
    assert "--gres=gpu:1" in sbatch_options({}, ngpu=1) and not any("gres" in o for o in sbatch_options({}, 0))
    # The repository's files parse; the mini recipe's fits a 2-core machine, the default asks for a GPU.
    assert sbatch_options(read_settings(ROOT / "conf/slurm_mini.conf", "train"), 0)[2:] == [
        "--cpus-per-task=1", "--mem=2G"]
    assert sbatch_options(read_settings(ROOT / "conf/slurm.conf", "train"), 1)[2:] == [
        "--cpus-per-task=8", "--mem=32G", "--gres=gpu:1"]


@pytest.mark.parametrize("text, message", [
    ("cpus 8\n", ":1: expected key=value"),
    ("mem=1G\ntrian.mem=2G\n", ":2: 'trian.mem': the part before '.' must be a stage"),
    ("memory=1G\n", ":1: unknown key 'memory'"),
    ("train.cpus=many\n", ":1: cpus must be a positive integer"),
    ("extra=--comment='open\n", ":1: extra:"),
])
def test_slurm_conf_errors_name_file_and_line(tmp_path, text, message):
    conf = tmp_path / "slurm.conf"
    conf.write_text(text)
    with pytest.raises(MtlserError, match=re.escape(str(conf) + message)):
        read_settings(conf, "train")


def test_job_script_sources_path_sh_and_appends_when_requeued(tmp_path):
    """The job script, run as Slurm would run task 2 (no Slurm needed): log framing, path.sh, requeue."""
    log = tmp_path / "logs" / "train.2.log"
    code = "import os, sys; print('venv', sys.prefix == os.environ['MTLSER_VENV'], 'job', os.environ['MTLSER_JOB'])"
    jobs = {1: (tmp_path / "logs" / "train.1.log", ["bash", "-c", "printf 'a bar'; exit 1"]),
            2: (log, ["python", "-c", code])}
    script = tmp_path / "job.sh"
    script.write_text(job_script(jobs, tmp_path, {"MTLSER_VENV": os.environ.get("MTLSER_VENV", "")}
                                 if os.environ.get("MTLSER_VENV") else {}))
    # A bare environment, as --export=NONE gives: only path.sh can make 'python' the venv's.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_JOB_ID": "7"}
    assert subprocess.run(["bash", str(script)], env=env).returncode == 0
    text = log.read_text()
    assert text.startswith("# python -c ") and "# Slurm job 7_2" in text
    assert "venv True job 2" in text and text.rstrip().splitlines()[-1].startswith("# Ended (code 0)")
    r = subprocess.run(["bash", str(script)], env=dict(env, SLURM_RESTART_COUNT="1"))
    assert r.returncode == 0
    text = log.read_text()
    assert text.startswith("# python -c ") and "# Requeued (restart 1)" in text and text.count("venv True") == 2
    assert subprocess.run(["bash", str(script)], env=dict(env, SLURM_ARRAY_TASK_ID="1")).returncode == 1
    assert "a bar\n# Ended (code 1)" in (tmp_path / "logs" / "train.1.log").read_text()  # on a line of its own


def test_launcher_waits_for_a_requeued_task_that_sbatch_wait_missed(tmp_path):
    """sbatch --wait may return (exit 0) while a requeued task is on its way back to the queue.

    Stand-ins for sbatch and squeue replay that: sbatch returns at once, the array's tasks run 2 s
    later while squeue lists the job. The launcher must wait for them and judge by their logs.
    """
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(
        "#!/bin/bash\n"
        'script="${@: -1}"; touch "$FAKE/queued"\n'
        'echo "Submitted batch job 99"\n'
        '( sleep 2; for t in 1 2; do SLURM_ARRAY_TASK_ID=$t SLURM_ARRAY_JOB_ID=99 bash "$script"; done\n'
        '  rm "$FAKE/queued" ) >/dev/null 2>&1 &\n'
        "exit 0\n")
    (fake / "squeue").write_text('#!/bin/bash\n[ -f "$FAKE/queued" ] && echo 99_1\nexit 0\n')
    for f in ("sbatch", "squeue"):
        (fake / f).chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(ROOT), FAKE=str(fake), PATH=f"{fake}:{os.environ['PATH']}")
    r = subprocess.run([sys.executable, "-m", "mtlser.launch", "--backend", "slurm", "JOB=1:2",
                        str(tmp_path / "log" / "j.JOB.log"), "bash", "-c",
                        "[ JOB != 2 ] || { echo 'ERROR: data/x: broken; fix it' >&2; exit 3; }"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert "# Ended (code 0)" in (tmp_path / "log" / "j.1.log").read_text()
    assert r.returncode == 1, r.stderr
    # The job's own error line beside its log, as the local launcher shows it (mtlser.launch.joblog.error_line).
    assert f"launch: Slurm job 99_2 failed (exit 3): data/x: broken; fix it; see {tmp_path}/log/j.2.log" \
        in r.stderr.splitlines(), r.stderr


# ---------------------------------------------------------------- on the local Slurm

def ser_on_slurm(recipe: Path, slurm: dict, *args: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MTLSER_CMD_BACKEND="slurm", **slurm)
    env.pop("PYTHONPATH", None)  # the job scripts source path.sh themselves
    return subprocess.Popen(["./ser.sh", *args], cwd=recipe, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def scontrol(slurm: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["scontrol", *args], env=dict(os.environ, **slurm), capture_output=True, text=True)


def start_requeued_now(slurm: dict, job: str, requeued_at: float, timeout: float = 120) -> None:
    """A requeued job may start again only ~2 min later (Slurm's credential lifetime): let it start sooner.

    The update takes effect once the job is back to PENDING (not while it is still COMPLETING), and
    not within the second its old credential was revoked: slurmd would refuse the new one ("Job
    credential revoked") and the job would fail instead of running again. So 3 s after the requeue.
    """
    env = dict(os.environ, **slurm)
    seen_pending = False
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=env, capture_output=True,
                               text=True).stdout.strip()
        if state == "PENDING" and time.time() >= requeued_at + 3:
            seen_pending = True
            scontrol(slurm, "update", f"JobId={job}", "StartTime=now")
        elif seen_pending:
            return
        time.sleep(0.2)


@pytest.mark.slurm
def test_failed_fold_on_slurm_fails_the_stage_naming_its_log(tmp_path, slurm):
    recipe = make_recipe(tmp_path / "egs" / "x")
    (recipe / "data" / "loso" / "fold01").mkdir(parents=True)  # a fold without train/valid
    (recipe / "data" / "token_list" / "phncls").mkdir(parents=True)
    (recipe / "data" / "token_list" / "phncls" / "tokens.txt").write_text("<blank>\nS0\n")
    proc = ser_on_slurm(recipe, slurm, "--stage", "3", "--stop-stage", "3", "--train-config", "conf/train_mini.yaml",
                        "--ngpu", "0", "--slurm-conf", "conf/slurm_mini.conf")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, out + err
    log = recipe / "exp" / "train_mini_loso" / "logs" / "train.1.log"
    assert f"see {log.resolve()}" in err or f"see {log}" in err or "logs/train.1.log" in err, err
    text = log.read_text()
    assert "# Slurm job " in text and "run stage 2" in text and "# Ended (code 1)" in text


@pytest.mark.slow
@pytest.mark.slurm
def test_mini_folds_on_slurm_match_local_and_survive_a_requeue(tmp_path, slurm):
    """Stages 3-4 as Slurm arrays give the local backend's models and decodes, also when fold 1 is requeued
    mid-training (stage 5, scoring, runs where ser.sh runs: the same hypotheses give the same scores)."""
    recipe = make_recipe(tmp_path / "egs" / "mini")
    common = ["--train-config", "conf/train_mini.yaml", "--nj", "2", "--ngpu", "0",
              "--slurm-conf", "conf/slurm_mini.conf", "--local-data-opts", "--sessions 1 --utts-per-speaker 8",
              "--train-opts", "--train.epochs 5"]  # epochs of a few batches: a wide window for the requeue
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    r = subprocess.run(["./ser.sh", "--stage", "0", "--stop-stage", "4", "--tag", "local", *common], cwd=recipe,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]

    proc = ser_on_slurm(recipe, slurm, "--stage", "3", "--stop-stage", "4", "--tag", "slurm", *common)
    exp = recipe / "exp" / "slurm"
    ckpt = exp / "fold01" / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), "fold 1 never finished an epoch on Slurm: " + (proc.communicate()[1] or "")[-3000:]
    job = re.search(r"# Slurm job (\d+_\d+)", (exp / "logs" / "train.1.log").read_text()).group(1)
    r = scontrol(slurm, "requeue", job)  # as preemption does: the job is killed and queued again
    assert r.returncode == 0, r.stderr
    start_requeued_now(slurm, job, time.time())
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]

    log = (exp / "logs" / "train.1.log").read_text()
    assert "# Requeued (restart 1)" in log, log[-3000:]
    resumed = re.search(r"resumed from \S+ after epoch (\d+)", log)
    assert resumed and 1 <= int(resumed.group(1)) < 5, "the requeued fold did not resume mid-training:\n" + log[-3000:]

    # Same folds, same weights, same hypotheses and posteriors as the local backend.
    local = recipe / "exp" / "local"
    for fold in ("fold01", "fold02"):
        a, b = load_file(local / fold / "best.safetensors"), load_file(exp / fold / "best.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{fold}: weights differ"
        a = torch.load(local / fold / "checkpoint.pt", weights_only=True)["model"]
        b = torch.load(exp / fold / "checkpoint.pt", weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), f"{fold}: last-epoch weights differ"
        for name in ("utt2emo_hyp", "emo_probs"):
            ours = (exp / fold / "decode_test" / name).read_text()
            assert ours and ours == (local / fold / "decode_test" / name).read_text(), f"{fold}: {name} differs"
    assert (exp / "logs" / "q").is_dir() and "Submitted batch job" in out
