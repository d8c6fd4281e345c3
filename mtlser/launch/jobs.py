"""Run an array of jobs locally or on Slurm, with Kaldi's run.pl interface.

    python -m mtlser.launch [--backend local|slurm] [--max-jobs-run N] [--gpu N] \\
        [--slurm-conf conf/slurm.conf --slurm-stage train] [--sbatch-opt=OPT ...] \\
        JOB=1:10 exp/x/logs/train.JOB.log  python -m mtlser.train ... --fold JOB

``JOB`` in the log path and in the command becomes 1..N. Each job's stdout and
stderr go to its log, framed by the command line and its exit status, as
run.pl writes them. Locally, at most --max-jobs-run jobs run at once and a
progress bar per running job follows the ``epoch i/N`` lines of its log.

Several folds on one GPU (or a few): ``--gpus 0`` (or ``MTLSER_GPUS=0``) gives
every local job ``CUDA_VISIBLE_DEVICES`` from that list, round robin over the
running slots, so ``--max-jobs-run 4 --gpus 0`` trains 4 folds at once on GPU 0
and ``--max-jobs-run 8 --gpus 0,1`` 4 on each. Local jobs also get
``OMP_NUM_THREADS`` = CPU cores / max-jobs-run unless it is set, so concurrent
jobs do not oversubscribe the CPU. A job's bar shows its ETA once its log has
started two epochs: the time per epoch seen so far times the epochs left.
Local jobs die with the launcher: a SIGTERM, SIGINT or SIGHUP to it is passed on
to each job's process group, and on Linux every job also has the kernel send it
SIGTERM when the launcher dies in any other way (SIGKILL, OOM), so no trainer is
left running detached, writing a fold dir that a rerun would then share.
With --backend slurm the array goes to ``sbatch --wait --array=1-N%M`` with the
settings of --slurm-conf for --slurm-stage, then any --sbatch-opt
(:mod:`mtlser.launch.slurm`: job script, requeue, failure report).
Exit status: 0 when every job succeeded; otherwise 1, naming the failed logs.
A failed job is reported on one line with the job's own error line beside its log
(:func:`mtlser.launch.joblog.error_line`): ``launch: job JOB=1 failed (exit 1): <its error>; see LOG``.

One writer per log: before any job starts, the launcher locks every job's log
(``.LOGNAME.lock`` beside it, :mod:`mtlser.launch.joblog`) for as long as it runs
the jobs (on Slurm: until the array ends). A second launch of the same jobs (a
second ``./run.sh --stage 3`` on the same tag) therefore starts none of them and
writes nothing: it stops at once with one line naming the log, the launcher that
writes it (PID, host, command) and what to do, and the running launch's logs
stay whole. A log is otherwise rewritten by each launch that runs its job, as
Kaldi's run.pl does.

Recipes reach this through cmd.sh (``train_cmd``/``decode_cmd``), which picks
the backend in one place.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from mtlser.launch.joblog import failure, lock_logs
from mtlser.utils import MtlserError


def parse_range(spec: str) -> tuple[str, int, int]:
    m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(\d+):(\d+)", spec)
    if not m:
        raise SystemExit(f"launch: expected a job range like JOB=1:10, got '{spec}'")
    name, lo, hi = m.group(1), int(m.group(2)), int(m.group(3))
    if hi < lo:
        raise SystemExit(f"launch: empty job range {spec}")
    return name, lo, hi


def substitute(args: list[str], name: str, value: int) -> list[str]:
    return [re.sub(rf"\b{name}\b", str(value), a) for a in args]


def _header(cmd: list[str]) -> str:
    return f"# {' '.join(shlex.quote(c) for c in cmd)}\n# Started at {time.strftime('%a %b %d %H:%M:%S %Z %Y')}\n#\n"


def job_env(slot: int, max_jobs: int, gpus: list[str], base: dict | None = None, per_job: int = 1) -> dict:
    """The environment of the local job in ``slot`` (1-based): its GPU(s) and CPU thread share.

    A job of ``per_job`` GPUs (torchrun, --ngpu N) gets the slot's next ``per_job`` ids of ``gpus``.
    """
    env = dict(os.environ if base is None else base)
    if gpus:
        k = max(1, per_job)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[((slot - 1) * k + i) % len(gpus)] for i in range(k))
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, max_jobs))))
    return env


def die_with_launcher():
    """A Popen preexec_fn by which the job gets SIGTERM when the launcher dies (Linux's prctl
    PR_SET_PDEATHSIG, which survives exec); None where there is no prctl. Resolved here, in the launcher:
    between fork and exec the child only calls it."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(143)

    return preexec


def eta_seconds(first: tuple[float, int], latest: tuple[float, int], total: int, now: float) -> float | None:
    """Seconds left of a job whose log said "epoch i/N" at these times: (time first seen, i) and the latest.

    Epoch i is in progress from the time "epoch i/N" appears; epochs i..N remain. None until two epochs
    have started (no rate yet).
    """
    (t0, e0), (t1, e1) = first, latest
    if e1 <= e0 or t1 <= t0:
        return None
    per_epoch = (t1 - t0) / (e1 - e0)
    return max(0.0, t1 + (total - e1 + 1) * per_epoch - now)


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


#: How often the launcher looks whether a job ended: a job that has nothing to do (a rerun) ends within a second
#: or two, and every poll is one waitpid per running job.
POLL_SECONDS = 0.05
#: How often the progress bars read the tails of the job logs.
BARS_SECONDS = 0.5


def run_local(name: str, lo: int, hi: int, log_pattern: str, cmd: list[str], max_jobs: int,
              progress_regex: str | None, gpus: list[str] | None = None, gpus_per_job: int = 1) -> list[int]:
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: preexec_fn below runs between fork and exec

    pending = list(range(lo, hi + 1))
    running: dict[int, tuple[subprocess.Popen, Path, float, object]] = {}
    failed: list[int] = []
    pattern = re.compile(progress_regex) if progress_regex else None
    show_bars = pattern is not None and sys.stderr.isatty() or os.environ.get("MTLSER_PROGRESS") == "1"
    overall = tqdm(total=len(pending), desc="jobs done", unit="job", position=0, leave=True,
                   disable=len(pending) < 2 or not (sys.stderr.isatty() or show_bars))  # no bars in log files
    slots = list(range(1, max_jobs + 1))
    preexec = die_with_launcher()
    epochs_seen: dict[int, list[tuple[float, int]]] = {}  # job -> [(time first seen, epoch) of first, latest]

    def start(job: int) -> None:
        log = Path(substitute([log_pattern], name, job)[0])
        log.parent.mkdir(parents=True, exist_ok=True)
        job_cmd = substitute(cmd, name, job)
        f = open(log, "w", encoding="utf-8")
        f.write(_header(job_cmd))
        f.flush()
        slot = slots.pop(0)
        env = dict(job_env(slot, max_jobs, gpus or [], per_job=gpus_per_job), MTLSER_JOB=str(job))
        proc = subprocess.Popen(job_cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=preexec)
        # Until the job logs its first "epoch i/N", the bar shows 0 of 1.
        bar = tqdm(total=1, desc=f"{name}={job}", position=slot, leave=False, disable=not show_bars,
                   bar_format="{desc}: {n}/{total} {bar} {elapsed}{postfix}")
        running[job] = (proc, log, time.time(), (f, bar, slot))

    def finish(job: int, rc: int) -> None:
        proc, log, t0, (f, bar, slot) = running.pop(job)
        f.write(f"# Accounting: time={int(time.time() - t0)} threads=1\n# Ended (code {rc}) at "
                f"{time.strftime('%a %b %d %H:%M:%S %Z %Y')}, elapsed time {int(time.time() - t0)} seconds\n")
        f.close()
        bar.close()
        slots.append(slot)
        slots.sort()
        overall.update(1)
        if rc != 0:
            failed.append(job)
            tqdm.write(f"launch: job {name}={job} failed {failure(log, f'exit {rc}')}", file=sys.stderr)

    def kill_all(signum=signal.SIGINT, *_):
        for proc, *_rest in running.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc, *_rest in running.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        raise SystemExit(128 + int(signum))

    caught = (signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, kill_all) for s in caught}
    bars_read = 0.0
    try:
        while pending or running:
            while pending and len(running) < max_jobs:
                start(pending.pop(0))
            time.sleep(POLL_SECONDS)
            read_bars = show_bars and pattern is not None and time.monotonic() - bars_read >= BARS_SECONDS
            if read_bars:
                bars_read = time.monotonic()
            for job in list(running):
                proc, log, _t0, (_f, bar, _slot) = running[job]
                if read_bars:
                    try:
                        with open(log, "rb") as fh:
                            fh.seek(max(0, log.stat().st_size - 8192))
                            tail = fh.read().decode("utf-8", "replace")
                        hits = pattern.findall(tail)
                        if hits:
                            done, total = map(int, hits[-1])
                            now = time.time()
                            seen = epochs_seen.setdefault(job, [(now, done), (now, done)])
                            if done != seen[1][1]:
                                seen[1] = (now, done)
                            eta = eta_seconds(seen[0], seen[1], total, now)
                            bar.set_postfix_str("ETA " + (format_duration(eta) if eta is not None else "?"),
                                                refresh=False)
                            bar.total = total
                            bar.n = done
                            bar.refresh()
                    except OSError:
                        pass
                rc = proc.poll()
                if rc is not None:
                    finish(job, rc)
    except KeyboardInterrupt:
        kill_all()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        overall.close()
    return failed


def run_slurm(name: str, lo: int, hi: int, log_pattern: str, cmd: list[str], max_jobs: int, gpu: int,
              extra: list[str], slurm_conf: str | None = None, slurm_stage: str = "train") -> list[int]:
    """The array through sbatch (mtlser.launch.slurm): settings from ``slurm_conf``, then ``extra``."""
    from mtlser.launch import slurm

    jobs = {j: (Path(substitute([log_pattern], name, j)[0]), substitute(cmd, name, j)) for j in range(lo, hi + 1)}
    settings = slurm.read_settings(slurm_conf, slurm_stage) if slurm_conf else {}
    options = slurm.sbatch_options(settings, gpu) + extra
    log_dir = jobs[lo][0].parent
    return slurm.run_array(jobs, max_jobs, options, Path(log_pattern).stem.split(".")[0], log_dir / "q")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--backend", default=os.environ.get("MTLSER_CMD_BACKEND", "local"),
                        choices=["local", "slurm"])
    parser.add_argument("--max-jobs-run", type=int, default=1)
    parser.add_argument("--gpu", type=int, default=0,
                        help="GPUs per job (slurm: --gres=gpu:N; local: ids of --gpus taken N at a time)")
    parser.add_argument("--slurm-conf", help="slurm: cluster settings, Kaldi style (conf/slurm.conf)")
    parser.add_argument("--slurm-stage", default="train", help="slurm: whose settings of --slurm-conf: train or decode")
    parser.add_argument("--gpus", default=os.environ.get("MTLSER_GPUS", ""),
                        help="local: GPU ids shared round robin by the running jobs, e.g. 0 (all on GPU 0) or 0,1; "
                             "default $MTLSER_GPUS; empty = CUDA_VISIBLE_DEVICES untouched")
    parser.add_argument("--progress-regex", default=r"epoch (\d+)/(\d+)")
    parser.add_argument("--sbatch-opt", action="append", default=[],
                        help="an extra sbatch option, repeatable: --sbatch-opt=--partition=gpu --sbatch-opt=--mem=16G")
    parser.add_argument("range", help="JOB=1:N")
    parser.add_argument("log", help="log file path; JOB is replaced")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if not args.command:
        parser.error("no command given")
    name, lo, hi = parse_range(args.range)
    if hi > lo and substitute([args.log], name, lo) == [args.log]:  # as run.pl refuses it
        print(f"launch: {args.range} would write every job's output into one log, {args.log}; put {name} in its "
              f"name (e.g. train.{name}.log)", file=sys.stderr)
        return 1
    with contextlib.ExitStack() as locks:
        try:
            lock_logs({f"{name}={j}": Path(substitute([args.log], name, j)[0]) for j in range(lo, hi + 1)}, locks)
        except MtlserError as e:
            print(f"launch: {e}", file=sys.stderr)
            return 1
        return _run(args, name, lo, hi)


def _run(args: argparse.Namespace, name: str, lo: int, hi: int) -> int:
    if args.backend == "local":
        gpus = [g for g in args.gpus.replace(" ", ",").split(",") if g]
        failed = run_local(name, lo, hi, args.log, args.command, max(1, args.max_jobs_run), args.progress_regex,
                           gpus, args.gpu)
    else:
        failed = run_slurm(name, lo, hi, args.log, args.command, max(1, args.max_jobs_run), args.gpu,
                           args.sbatch_opt, args.slurm_conf, args.slurm_stage)
    if failed:
        logs = ", ".join(substitute([args.log], name, j)[0] for j in failed)
        print(f"launch: {len(failed)} of {hi - lo + 1} jobs failed: {logs}", file=sys.stderr)
        return 1
    return 0
