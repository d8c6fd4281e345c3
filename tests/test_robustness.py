"""Reliability (docs/robustness.md is the matrix of these tests): no silent wrong results, one writer per
experiment dir, derived data keyed by content, ids that cannot escape, short and broken audio, one clear line
for each failure a user can cause."""

from __future__ import annotations

import os
import pickle
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from mtlser.data.datadir import DataDir, read_table, validate_data_dir, write_table
from mtlser.utils import MtlserError
from tests.conftest import tiny_config_dict, write_wav

ROOT = Path(__file__).resolve().parents[1]
EMOTIONS = ["ang", "hap", "sad", "neu"]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def corpus(root: Path, n_spk: int = 3, n_utt: int = 4, seconds: float = 0.5) -> Path:
    """A stage-0 data dir with CTC targets (text_phncls), audio under root/wav."""
    tables = {k: {} for k in ("wav.scp", "text", "utt2spk", "utt2emo", "utt2dur", "text_phncls")}
    for s in range(n_spk):
        spk = f"spk{s}"
        for i in range(n_utt):
            utt = f"{spk}_u{i}"
            emo = (s + i) % 4
            tables["wav.scp"][utt] = str(write_wav(root / "wav" / f"{utt}.wav", seconds, seed=10 * s + i))
            tables["text"][utt] = "hello"
            tables["utt2spk"][utt] = spk
            tables["utt2emo"][utt] = EMOTIONS[emo]
            tables["utt2dur"][utt] = f"{seconds:.4f}"
            tables["text_phncls"][utt] = f"S{emo} Vs{emo} N{emo}"
    DataDir(tables, emotions=list(EMOTIONS)).write(root / "all")
    return root / "all"


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """LOSO folds of a 3-speaker corpus and the phncls token list: (folds dir, token list file)."""
    from mtlser.data.split import split
    from mtlser.text.phone_classes import PhoneClassMap, phncls_token_list
    from mtlser.text.tokenize import write_token_list

    root = tmp_path_factory.mktemp("corpus")
    split(corpus(root), root / "loso", valid_share=0.25)
    write_token_list(root / "tokens.txt", phncls_token_list(PhoneClassMap.load().classes, len(EMOTIONS)))
    return root / "loso", root / "tokens.txt"


@pytest.fixture
def config(tmp_path):
    def make(**sections) -> Path:
        path = tmp_path / f"tiny{len(list(tmp_path.glob('tiny*.yaml')))}.yaml"
        train = {"epochs": 1, "log_interval": 1000, **sections.pop("train", {})}
        path.write_text(yaml.safe_dump(tiny_config_dict(train=train, **sections)))
        return path

    return make


def train(folds, exp: Path, config: Path, *extra: str) -> int:
    """Stage 3 for fold 1, in this process (mtlser.train's main: what the recipe runs)."""
    from mtlser.train.__main__ import main

    folds_dir, tokens = folds
    return main(["--config", str(config), "--folds-dir", str(folds_dir), "--fold", "1", "--token-list", str(tokens),
                 "--exp-dir", str(exp), *extra])


def checkpoint_epoch(fold_dir: Path) -> int:
    return int(torch.load(fold_dir / "checkpoint.pt", weights_only=True)["epoch"])


# ----------------------------------------------------------------------------- 1. what produced the model
def test_resume_refuses_other_maths_names_the_fields_and_the_way_out(folds, config, tmp_path):
    exp = tmp_path / "exp"
    cfg = config()
    train(folds, exp, cfg)
    fold = exp / "fold01"
    recorded = (fold / "config.yaml").read_text()
    ckpt = (fold / "checkpoint.pt").read_bytes()
    # The README's own follow-up run, on the finished default: the old model must not be relabelled.
    with pytest.raises(MtlserError) as e:
        train(folds, exp, cfg, "--train-opts", "--loss.lambda 5 --train.epochs 40")
    msg = str(e.value)
    assert "loss.lambda: 0.1 -> 5" in msg and "--tag" in msg and "--force" in msg
    assert "train.epochs" not in msg  # more epochs alone would be allowed
    assert (fold / "config.yaml").read_text() == recorded and (fold / "checkpoint.pt").read_bytes() == ckpt
    with pytest.raises(MtlserError, match=r"backbone\.custom\.encoder_num_layers: 2 -> 3"):
        train(folds, exp, cfg, "--backbone.custom", "{encoder_num_layers: 3}")
    assert (fold / "config.yaml").read_text() == recorded
    # The checkpoint also records its token list and training data.
    tokens = folds[1].read_text().splitlines()
    (tmp_path / "tokens.txt").write_text("\n".join(tokens + ["X9"]) + "\n")
    with pytest.raises(MtlserError, match="another CTC token list"):
        train((folds[0], tmp_path / "tokens.txt"), exp, cfg)
    relabelled = tmp_path / "loso"
    shutil.copytree(folds[0], relabelled)
    emo = read_table(relabelled / "fold01" / "train" / "utt2emo")
    first = sorted(emo)[0]
    emo[first] = "sad" if emo[first] != "sad" else "ang"
    write_table(relabelled / "fold01" / "train" / "utt2emo", emo)
    with pytest.raises(MtlserError, match="trained on other utterances, labels or CTC targets"):
        train((relabelled, folds[1]), exp, cfg)
    # --force retrains from scratch under the new settings, once: the same command again finds nothing to do.
    train(folds, exp, cfg, "--loss.lambda", "5", "--force")
    assert yaml.safe_load((fold / "config.yaml").read_text())["loss"]["lambda"] == 5
    assert "removed checkpoint.pt" in (fold / "train.log").read_text()
    retrained = (fold / "checkpoint.pt").read_bytes()
    train(folds, exp, cfg, "--loss.lambda", "5", "--force")
    assert (fold / "checkpoint.pt").read_bytes() == retrained
    assert "training already finished" in (fold / "train.log").read_text().split("command:")[-1]


def test_more_epochs_continue_a_finished_fold_as_one_longer_run(folds, config, tmp_path):
    cfg = config()
    train(folds, tmp_path / "straight", cfg, "--train.epochs", "2", "--train.log_interval", "5")
    train(folds, tmp_path / "extended", cfg)
    train(folds, tmp_path / "extended", cfg, "--train.epochs", "2", "--train.log_interval", "5")
    fold = tmp_path / "extended" / "fold01"
    log = (fold / "train.log").read_text()
    assert "may change on resume: train.epochs: 1 -> 2" in log and "train.log_interval: 1000 -> 5" in log
    assert checkpoint_epoch(fold) == 2 and yaml.safe_load((fold / "config.yaml").read_text())["train"]["epochs"] == 2
    a = torch.load(tmp_path / "straight" / "fold01" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(fold / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Fewer epochs than trained would make the record false.
    with pytest.raises(MtlserError, match="not fall below the 2 epochs already trained"):
        train(folds, tmp_path / "extended", cfg)
    # With a linear decay, the epoch count sets every step's learning rate: not resumable.
    decay = config(scheduler={"name": "warmup_linear", "warmup_steps": 1})
    train(folds, tmp_path / "decay", decay)
    with pytest.raises(MtlserError, match="warmup_linear"):
        train(folds, tmp_path / "decay", decay, "--train.epochs", "2")


# ----------------------------------------------------------------------------- 2. one writer per fold dir
HOLD = "import sys, time; from mtlser.utils.lock import hold_lock\nwith hold_lock(sys.argv[1]):\n" \
       "    print('held', flush=True); time.sleep(120)\n"


def test_a_second_writer_fails_at_once_naming_the_holder(folds, config, tmp_path):
    from mtlser.utils.lock import hold_lock

    fold = tmp_path / "exp" / "fold01"
    fold.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(fold / ".lock")], env=env(), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.time()
        with pytest.raises(MtlserError) as e:
            train(folds, tmp_path / "exp", config())
        assert f"PID {holder.pid} on host {socket.gethostname()}" in str(e.value) and "in use" in str(e.value)
        assert time.time() - t0 < 60, "the second run must fail at once, not wait"
        assert not (fold / "checkpoint.pt").exists() and not (fold / "config.yaml").exists()
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs, the OS drops the lock
        holder.wait()
    with hold_lock(fold / ".lock"):  # released with its holder: no stale lock to clean up
        pass


JOB = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)\n"


def test_killing_the_launcher_stops_its_jobs(tmp_path):
    pid_file = tmp_path / "pid.JOB"
    launcher = subprocess.Popen([sys.executable, "-m", "mtlser.launch", "--max-jobs-run", "2", "JOB=1:2",
                                 str(tmp_path / "log.JOB"), sys.executable, "-c", JOB, str(pid_file)],
                                env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = []
    try:
        deadline = time.time() + 60
        while len(pids) < 2 and time.time() < deadline:
            time.sleep(0.1)
            pids = [int(p.read_text()) for p in tmp_path.glob("pid.*") if p.read_text()]
        assert len(pids) == 2, "the jobs never started"
        launcher.kill()  # SIGKILL: the launcher cannot pass anything on itself
        launcher.wait()
        deadline = time.time() + 20
        while any(_alive(p) for p in pids) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), "jobs kept running after their launcher died"
    finally:
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not reaped yet) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# One writer per log: a second launch of the same jobs (two ./run.sh --stage 3 on one tag) starts none of them.
WAIT = ("import pathlib, sys, time\n"
        "print('started', sys.argv[2], flush=True)\n"
        "deadline = time.time() + 300\n"
        "while not pathlib.Path(sys.argv[1]).exists() and time.time() < deadline:\n"
        "    time.sleep(0.05)\n"
        "print('done', flush=True)\n")


def start_waiting_launch(tmp_path: Path, cwd: Path, log: str, jobs: int = 1) -> subprocess.Popen:
    """A launcher running JOB=1:jobs of a job that waits for tmp_path/release; returns once every job runs."""
    (tmp_path / "wait.py").write_text(WAIT)
    launcher = subprocess.Popen([sys.executable, "-m", "mtlser.launch", "--max-jobs-run", str(jobs), f"JOB=1:{jobs}",
                                 log, sys.executable, str(tmp_path / "wait.py"), str(tmp_path / "release"), "JOB"],
                                env=env(), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    logs = [cwd / log.replace("JOB", str(j)) for j in range(1, jobs + 1)]
    deadline = time.time() + 120
    while not all(f.is_file() and "started" in f.read_text() for f in logs):
        assert launcher.poll() is None and time.time() < deadline, "the first launch never started its jobs"
        time.sleep(0.05)
    return launcher


def in_use(cwd: Path, log: str, launcher: subprocess.Popen, lock: str) -> str:
    """The line by which a second launch in ``cwd`` refuses the log of job JOB=1 (the holder as its lock file
    records it)."""
    from mtlser.utils.lock import holder_of

    h = holder_of(cwd / lock)
    assert h["pid"] == launcher.pid and "JOB=1:" in h["command"], h
    return (f"launch: the log of job JOB=1, {log}, is in use by PID {launcher.pid} on host {socket.gethostname()} "
            f"(since {h['since']}): {h['command']}; wait for that run to end or stop it (lock: {lock}); "
            "no job of this launch was started")


def test_a_second_launch_of_the_same_jobs_starts_none_and_leaves_their_logs_whole(tmp_path):
    winner = start_waiting_launch(tmp_path, tmp_path, "logs/train.JOB.log", jobs=2)
    try:
        logs = [tmp_path / "logs" / f"train.{j}.log" for j in (1, 2)]
        before = [f.read_bytes() for f in logs]
        loser = subprocess.run([sys.executable, "-m", "mtlser.launch", "--max-jobs-run", "2", "JOB=1:2",
                                "logs/train.JOB.log", sys.executable, "-c", "open('ran.JOB', 'w')"],
                               env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert loser.returncode == 1
        assert loser.stderr == in_use(tmp_path, "logs/train.1.log", winner, "logs/.train.1.log.lock") + "\n"
        assert not list(tmp_path.glob("ran.*")), "the second launch ran a job"
        assert [f.read_bytes() for f in logs] == before
    finally:
        (tmp_path / "release").touch()
        winner.wait(timeout=120)
    assert winner.returncode == 0, winner.stderr.read()
    for j, f in enumerate(logs, 1):
        text = f.read_text()
        assert f"started {j}\ndone\n# Accounting" in text and "# Ended (code 0)" in text and "ran." not in text
    # The lock goes with its launcher: the next launch runs the jobs and rewrites their logs, as run.pl does.
    again = subprocess.run([sys.executable, "-m", "mtlser.launch", "JOB=1:2", "logs/train.JOB.log",
                            sys.executable, "-c", "print('again JOB')"], env=env(), cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "again 1" in logs[0].read_text() and "started" not in logs[0].read_text()
    # Nor do the jobs of one launch share a log (run.pl refuses that too).
    one = subprocess.run([sys.executable, "-m", "mtlser.launch", "JOB=1:2", "logs/all.log", sys.executable, "-c", "1"],
                         env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert one.returncode == 1 and one.stderr == ("launch: JOB=1:2 would write every job's output into one log, "
                                                  "logs/all.log; put JOB in its name (e.g. train.JOB.log)\n")
    assert not (tmp_path / "logs" / "all.log").exists()


def test_a_second_stage_3_on_the_same_tag_stops_naming_the_running_launch(tmp_path):
    from tests.test_recipe import make_recipe, ser

    recipe = make_recipe(tmp_path / "egs" / "x")
    (recipe / "data" / "loso" / "fold01").mkdir(parents=True)
    (recipe / "data" / "token_list" / "phncls").mkdir(parents=True)
    (recipe / "data" / "token_list" / "phncls" / "tokens.txt").write_text("<blank>\nS0\n")
    # The first run's launcher, as stage 3 starts it (its job waits here instead of training).
    winner = start_waiting_launch(tmp_path, recipe, "exp/t/logs/train.JOB.log")
    try:
        log = recipe / "exp" / "t" / "logs" / "train.1.log"
        before = log.read_bytes()
        r = ser(recipe, "--stage", "3", "--stop-stage", "3", "--train-config", "conf/train_mini.yaml", "--tag", "t")
        assert r.returncode == 1
        assert r.stderr.splitlines()[-1] == in_use(recipe, "exp/t/logs/train.1.log", winner,
                                                   "exp/t/logs/.train.1.log.lock")
        assert log.read_bytes() == before and not (recipe / "exp" / "t" / "fold01").exists()
    finally:
        (tmp_path / "release").touch()
        winner.wait(timeout=120)
    text = log.read_text()
    assert winner.returncode == 0 and "started 1\ndone\n# Accounting" in text and "# Ended (code 0)" in text


# A failed job's own error line reaches the terminal beside its log (the resume refusals above included).
def test_a_refused_resume_reaches_the_terminal_of_stage_3(folds, config, tmp_path):
    from tests.test_recipe import make_recipe, ser

    recipe = make_recipe(tmp_path / "egs" / "x")
    (recipe / "data").mkdir()
    (recipe / "data" / "loso").symlink_to(folds[0])
    (recipe / "data" / "token_list" / "phncls").mkdir(parents=True)
    shutil.copy(folds[1], recipe / "data" / "token_list" / "phncls" / "tokens.txt")
    stage_3 = ["--stage", "3", "--stop-stage", "3", "--train-config", str(config()), "--folds", "1", "--tag", "t"]
    r = ser(recipe, *stage_3)
    assert r.returncode == 0, r.stderr[-3000:]
    r = ser(recipe, *stage_3, "--train-opts", "--loss.lambda 5")
    assert r.returncode == 1
    assert r.stderr.splitlines()[-2:] == [
        "launch: job JOB=1 failed (exit 1): exp/t/fold01: trained for 1 epochs with other settings than this run's "
        "(recorded -> now: loss.lambda: 0.1 -> 5.0); its model stays as it is. Run these settings as a new experiment "
        "(./run.sh --tag NEW_NAME, or another --exp-dir), or retrain this fold from scratch with --force "
        "(./run.sh --train-opts \"... --force\"); see exp/t/logs/train.1.log",
        "launch: 1 of 1 jobs failed: exp/t/logs/train.1.log"]


def test_the_error_line_of_a_job_log(tmp_path):
    """What the launchers (local and Slurm) show of a failed job: its last error line, not its whole log."""
    from mtlser.launch.joblog import MAX_ERROR_LINE, error_line

    def line(*body: str) -> str | None:
        log = tmp_path / "job.log"
        log.write_text("# python -m mtlser.train --fold 1\n# Started at now\n#\n" + "".join(b + "\n" for b in body)
                       + "# Accounting: time=1 threads=1\n# Ended (code 1) at now, elapsed time 1 seconds\n")
        return error_line(log)

    # mtlser's message in the logging format (a trainer) or bare (run_main without logging); the last one counts.
    assert line("2026-12-05 17:00:00,001 (lock:60) ERROR: fold dir exp/t/fold01 is in use by PID 7",
                "2026-12-05 17:00:01,002 (__init__:95) ERROR: data/x/wav.scp:3: not found; fix it") == \
        "data/x/wav.scp:3: not found; fix it"
    assert line("epoch 1/2", "ERROR: conf/a.yaml.train: unknown key 'epoch'") == "conf/a.yaml.train: unknown key 'epoch'"
    # argparse's error, and an uncaught exception's last line (its message, not the stack).
    assert line("usage: train.py [-h]", "train.py: error: unrecognized arguments: --bad") == \
        "train.py: error: unrecognized arguments: --bad"
    assert line("Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "    1 / 0",
                "ZeroDivisionError: division by zero") == "ZeroDivisionError: division by zero"
    # mtlser's own line wins over a traceback printed after it (e.g. by torchrun about its failed rank).
    assert line("2026-12-05 17:00:00,001 (run:50) ERROR: exp/t/fold01: trained with other settings",
                "Traceback (most recent call last):", "  File ...",
                "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ") == \
        "exp/t/fold01: trained with other settings"
    # The last state of a progress bar's line; framing lines and plain output are not errors.
    assert line("ERROR: half\rERROR: whole line") == "whole line"
    assert line("epoch 1/2", "Killed") is None
    assert len(line("ERROR: " + "x" * (MAX_ERROR_LINE + 50))) == MAX_ERROR_LINE + 2
    assert error_line(tmp_path / "no such.log") is None
    # A command of several lines in the header is not the job's output; on Slurm, only the last run counts.
    log = tmp_path / "job.log"
    log.write_text("# python -c 'import sys\nERROR: x'\n# Started at now\n#\nfine\n# Ended (code 1) at now\n")
    assert error_line(log) is None
    log.write_text("# python -m mtlser.train\n# Started at now\n# Slurm job 7_1 on n1\nERROR: first run\n"
                   "# Requeued (restart 1) at now: runs again, training resumes\n# Slurm job 7_1 on n2\n"
                   "ERROR: second run\n# Ended (code 1) at now\n")
    assert error_line(log) == "second run"


# ----------------------------------------------------------------------------- 3. keyed by content
def _rewrite(path: Path, seconds: float, sr: int, seed: int) -> None:
    old = path.stat().st_mtime_ns
    write_wav(path, seconds, sr=sr, seed=seed)
    os.utime(path, ns=(old + 10**9, old + 10**9))  # a later mtime even on coarse-clock file systems


def test_converted_audio_is_redone_when_its_source_changes(tmp_path, caplog):
    from mtlser.data.split import split

    data = corpus(tmp_path, n_spk=3, n_utt=2)
    scp = read_table(data / "wav.scp")
    utt = sorted(scp)[0]
    src = Path(scp[utt])
    write_wav(src, 0.5, sr=8000, seed=1)  # not 16 kHz: stage 2 converts it
    split(data, tmp_path / "loso", valid_share=0.25)
    copy = tmp_path / "wav16k" / f"{utt}.wav"
    first = sf.read(copy)[0]
    _rewrite(src, 0.5, 8000, seed=2)
    with caplog.at_level("INFO"):
        split(data, tmp_path / "loso", valid_share=0.25)
    second = sf.read(copy)[0]
    assert not np.array_equal(first, second), "a stale conversion was reused"
    import torchaudio.functional as AF

    expected = AF.resample(torch.from_numpy(sf.read(src, dtype="float32")[0]), 8000, 16000).numpy()
    assert np.abs(second - expected).max() < 1e-3  # the copy is of the new source (PCM_16 rounding)
    assert "were redone: their source audio" in caplog.text and utt in caplog.text


def test_cnn_cache_recomputes_audio_that_changed(tmp_path, caplog):
    from mtlser.config import Config, from_dict
    from mtlser.data.cnn_cache import build_cache
    from mtlser.data.dataset import read_audio
    from mtlser.model.backbone import build_backbone

    cfg = from_dict(Config, tiny_config_dict(), "test")
    backbone = build_backbone(cfg.backbone).eval()
    wavs = [(f"u{i}", str(write_wav(tmp_path / f"u{i}.wav", 0.4, seed=i))) for i in range(2)]
    build_cache(backbone, wavs, tmp_path / "cache", torch.device("cpu"))
    _rewrite(Path(wavs[1][1]), 0.6, 16000, seed=7)
    with caplog.at_level("INFO"):
        cache = build_cache(backbone, wavs, tmp_path / "cache", torch.device("cpu"))
    assert "1 utterances' audio changed since their CNN features were cached" in caplog.text
    wav = torch.from_numpy(read_audio(wavs[1][1]))
    with torch.no_grad():
        ref, _ = backbone.cnn(wav[None], torch.tensor([len(wav)]))
    feats, samples = cache.get("u1")
    assert samples == len(wav) and torch.equal(torch.from_numpy(np.array(feats)), ref[0])
    # A new reader of the same cache sees the new entry too (later shards win).
    from mtlser.data.cnn_cache import CNNFeatureCache

    assert CNNFeatureCache(cache.root).get("u1")[1] == len(wav)


# ----------------------------------------------------------------------------- 4. ids cannot escape
@pytest.mark.parametrize("bad", ["../escape", "a/b", ".hidden", "-rf", "a\\b", "ü"])
def test_validator_rejects_ids_that_are_not_safe_file_names(tmp_path, bad):
    data = corpus(tmp_path, n_spk=2, n_utt=2)
    dd = DataDir.load(data)
    first = dd.utts[0]
    for table in dd.tables.values():
        table[bad] = table.pop(first)
    dd.write(data)
    with pytest.raises(MtlserError, match=r"is not a safe file name; ids may use only letters"):
        validate_data_dir(data)


def test_an_id_cannot_make_stage_2_write_outside_its_dir(tmp_path):
    from mtlser.data.split import normalize_audio

    wav = write_wav(tmp_path / "src.wav", 0.3, sr=8000)
    dd = DataDir({"wav.scp": {"../../escaped": str(wav)}, "utt2spk": {"../../escaped": "s"}})
    with pytest.raises(MtlserError, match="cannot be a file name"):
        normalize_audio(dd, tmp_path / "a" / "b" / "wav16k")
    assert not list(tmp_path.rglob("escaped*"))
    from mtlser.utils.fileio import path_in

    assert path_in(tmp_path, "Ses01F_impro01_F000", ".wav") == tmp_path / "Ses01F_impro01_F000.wav"


def test_a_space_in_an_utterance_id_is_named_as_such(tmp_path):
    data = corpus(tmp_path, n_spk=2, n_utt=2)
    for name in ("wav.scp", "text", "utt2spk", "utt2emo", "utt2dur", "text_phncls"):
        lines = (data / name).read_text().splitlines()
        lines[0] = lines[0].replace("spk0_u0", "spk0 u0", 1)
        (data / name).write_text("\n".join(lines) + "\n")
    with pytest.raises(MtlserError, match="an utterance id with a space"):
        validate_data_dir(data, check_audio=False)


# ----------------------------------------------------------------------------- 5. short and broken audio
def test_scoring_counts_what_stage_4_could_not_decode(tmp_path):
    from mtlser.score.aggregate import aggregate
    from mtlser.score.fold import score_fold

    ref = {"u1": "ang", "u2": "hap", "u3": "sad", "u4": "neu", "u5": "neu"}
    data = tmp_path / "data" / "test"
    DataDir({"utt2emo": ref, "utt2spk": {u: "s1" for u in ref}}, emotions=list(EMOTIONS)).write(data)
    dec = tmp_path / "exp" / "fold01" / "decode_test"
    dec.mkdir(parents=True)
    write_table(dec / "utt2emo_hyp", {"u1": "ang", "u2": "hap", "u3": "ang"})
    write_table(dec / "utt2error", {"u4": "too short: 160 samples, the model needs at least 400 (25 ms)",
                                    "u5": "unreadable: cannot read audio"})
    (dec / "data_dir").write_text(f"{data}\n")
    r = score_fold(dec)
    assert r["n"] == 3 and r["wa"] == pytest.approx(2 / 3) and r["not_scored"] == 2
    assert r["not_scored_utts"]["u4"].startswith("too short")
    text = (dec / "result.txt").read_text()
    assert "NOT SCORED: 2 of 5 test utterances" in text and "u5  unreadable" in text
    summary = aggregate(tmp_path / "exp")
    assert summary["not_scored"] == 2 and summary["n"] == 3
    assert "2 more could not be decoded" in (tmp_path / "exp" / "RESULTS.md").read_text()
    # An utterance both decoded and listed as failed: two runs mixed.
    write_table(dec / "utt2error", {"u3": "too short", "u4": "x", "u5": "y"})
    with pytest.raises(MtlserError, match="mixes two runs"):
        score_fold(dec)


def test_stage_2_detects_truncated_audio_and_audio_shorter_than_utt2dur(tmp_path):
    from mtlser.data.split import split

    data = corpus(tmp_path, n_spk=3, n_utt=2)
    scp = read_table(data / "wav.scp")
    cut, short = sorted(scp)[1], sorted(scp)[3]
    with open(scp[cut], "r+b") as f:  # copied while still being written: the header promises more
        f.truncate(os.path.getsize(scp[cut]) // 2)
    write_wav(Path(scp[short]), 0.2)  # utt2dur still says 0.5 s
    with pytest.raises(MtlserError) as e:
        split(data, tmp_path / "loso")
    msg = str(e.value)
    assert f"wav.scp:2: '{cut}'" in msg and "truncated: its header declares 0.500 s" in msg
    assert f"wav.scp:4: '{short}'" in msg and "shorter than its utt2dur" in msg
    assert not (tmp_path / "loso").exists()
    flac = tmp_path / "x.flac"
    sf.write(flac, 0.1 * np.random.default_rng(0).standard_normal(8000).astype("float32"), 16000)
    with open(flac, "r+b") as f:
        f.truncate(os.path.getsize(flac) // 2)
    from mtlser.data.audio_check import check_file

    assert "truncated or corrupt" in (check_file(str(flac))[1] or "")


def test_stage_2_refuses_audio_with_nan_or_inf_samples(tmp_path):
    data = corpus(tmp_path, n_spk=3, n_utt=2)
    scp = read_table(data / "wav.scp")
    nan_utt, inf_utt = sorted(scp)[1], sorted(scp)[4]
    for utt, bad in ((nan_utt, np.nan), (inf_utt, -np.inf)):
        wav, rate = sf.read(scp[utt], dtype="float32")
        wav[len(wav) // 2] = bad
        sf.write(scp[utt], wav, rate, subtype="FLOAT")
    r = subprocess.run([sys.executable, "-m", "mtlser.data.split", "--data-dir", str(data), "--out",
                        str(tmp_path / "loso")], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (line,) = [x for x in r.stderr.splitlines() if "ERROR" in x]
    assert "2 audio files" in line and "NaN or infinite samples" in line
    assert f"wav.scp:2: '{nan_utt}'" in line and f"wav.scp:5: '{inf_utt}'" in line
    assert not (tmp_path / "loso").exists()


def test_training_names_every_utterance_it_skips_as_too_short(folds, config, tmp_path):
    from mtlser.config import load_config
    from mtlser.text.tokenize import read_token_list
    from mtlser.train.trainer import Trainer

    folds_dir, tokens = folds
    fold = tmp_path / "fold01"
    shutil.copytree(folds_dir / "fold01", fold)
    scp, dur = read_table(fold / "train" / "wav.scp"), read_table(fold / "train" / "utt2dur")
    short = sorted(scp)[:4]
    for u in short:
        scp[u] = str(write_wav(tmp_path / f"{u}.wav", 0.01))
        dur[u] = "0.0100"
    write_table(fold / "train" / "wav.scp", scp)
    write_table(fold / "train" / "utt2dur", dur)
    from mtlser.utils import setup_logging

    setup_logging(tmp_path / "log")
    Trainer(load_config(config()), fold, read_token_list(tokens), tmp_path / "exp")
    log = (tmp_path / "log").read_text()
    assert "skipped 4 utterances shorter than" in log and all(u in log for u in short)


# ----------------------------------------------------------------------------- 6. one clear line
def test_a_full_disk_while_checkpointing_names_the_file_and_keeps_the_previous_checkpoint(folds, config, tmp_path):
    from mtlser.config import load_config
    from mtlser.text.tokenize import read_token_list
    from mtlser.train.trainer import Trainer

    exp = tmp_path / "exp"
    cfg = config(train={"epochs": 2})
    fold = exp / "fold01"
    # Epoch 1 of 2, then the run ends after its checkpoint (as a preemption would).
    trainer = Trainer(load_config(cfg, ["--train.stop_after_epoch", "1"]), folds[0] / "fold01",
                      read_token_list(folds[1]), fold)
    trainer.fit()
    assert trainer.epoch == 1 and not trainer.finished
    ckpt, best = (fold / "checkpoint.pt").stat().st_size, (fold / "best.safetensors").stat().st_size
    assert best < ckpt
    limit = (best + ckpt) // 2  # best.safetensors fits, checkpoint.pt does not

    def cap_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    folds_dir, tokens = folds
    r = subprocess.run([sys.executable, "-m", "mtlser.train", "--config", str(cfg), "--folds-dir", str(folds_dir),
                        "--fold", "1", "--token-list", str(tokens), "--exp-dir", str(exp)],
                       env=env(), cwd=ROOT, capture_output=True, text=True, preexec_fn=cap_file_size)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"{fold / 'checkpoint.pt'}: cannot write it (File too large" in r.stderr
    assert f"the previous checkpoint {fold / 'checkpoint.pt'} is intact" in r.stderr
    assert checkpoint_epoch(fold) == 1
    assert not [p.name for p in fold.iterdir() if p.name.endswith(".tmp")]
    train(folds, exp, cfg)  # space again: resumes from the intact checkpoint
    assert checkpoint_epoch(fold) == 2


def test_unreadable_checkpoints_and_weights_are_one_line_without_unsafe_advice(folds, config, tmp_path):
    from mtlser.infer import SERPredictor

    exp = tmp_path / "exp"
    cfg = config()
    train(folds, exp, cfg)
    fold = exp / "fold01"
    ckpt = fold / "checkpoint.pt"
    good = ckpt.read_bytes()

    with open(ckpt, "wb") as f:
        pickle.dump({"model": Payload()}, f)
    with pytest.raises(MtlserError) as e:
        train(folds, exp, cfg)
    assert "cannot read the checkpoint" in str(e.value) and "weights_only" not in str(e.value)
    ckpt.write_bytes(good[: len(good) // 2])
    with pytest.raises(MtlserError, match="truncated or corrupt") as e:
        train(folds, exp, cfg)
    assert "weights_only" not in str(e.value)
    ckpt.write_bytes(good)

    weights = fold / "best.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(MtlserError, match="best.safetensors: truncated or corrupt"):
        SERPredictor.from_pretrained(fold)
    torch.save({"w": torch.zeros(2)}, weights)
    with pytest.raises(MtlserError, match="best.safetensors: a pickle"):
        SERPredictor.from_pretrained(fold)


class Payload:
    """An object a weights-only load refuses (a stand-in for code in a pickle)."""


def test_bad_settings_are_one_line_before_anything_runs(tmp_path):
    from mtlser.config import load_config
    from mtlser.model.backbone import architecture

    listed = tmp_path / "list.yaml"
    listed.write_text("- backbone\n- loss\n")
    with pytest.raises(MtlserError, match="expected a mapping of sections"):
        load_config(listed, ["--train.epochs", "1"])
    cases = {
        "train.epochs": ("0", "expected >= 1"),
        "data.num_workers": ("-1", "expected >= 0"),
        "backbone.dropout": ("1.0", r"expected a probability in \[0, 1\)"),
        "model.head_dropout": ("-0.1", r"expected a probability in \[0, 1\)"),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(MtlserError, match=message):
            load_config(None, [f"--{key}", value])
    custom = dict(tiny_config_dict()["backbone"]["custom"], encoder_embed_dim=30, encoder_num_heads=4)
    with pytest.raises(MtlserError, match="encoder_embed_dim = 30 is not divisible by encoder_num_heads = 4"):
        architecture("wav2vec2", "custom", custom)


def test_a_value_with_spaces_in_train_opts_stays_one_value(tmp_path):
    from tests.test_recipe import make_recipe, ser

    recipe = make_recipe(tmp_path / "egs" / "x")
    (recipe / "data" / "loso" / "fold01").mkdir(parents=True)
    (recipe / "data" / "token_list" / "phncls").mkdir(parents=True)
    (recipe / "data" / "token_list" / "phncls" / "tokens.txt").write_text("<blank>\nS0\n")
    r = ser(recipe, "--stage", "3", "--stop-stage", "3", "--train-config", "conf/train_mini.yaml",
            "--train-opts", "--backbone.arch 'wav 2 vec'")
    assert r.returncode != 0
    # Refused by stage 3's config check, before any job starts, naming where the value came from.
    assert ("ERROR: --train-opts: backbone.arch = 'wav 2 vec'; expected one of wav2vec2, hubert, wavlm"
            in r.stderr.splitlines()) and "Traceback" not in r.stderr
