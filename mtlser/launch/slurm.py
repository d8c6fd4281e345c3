"""Slurm: the cluster settings of conf/slurm.conf, and an array of jobs through sbatch.

:mod:`mtlser.launch.jobs` (``--backend slurm``) hands over the jobs, each one a log path
and a command; this module writes one job script for the array, submits it with
``sbatch --wait --array=LO-HI%M``, and reports the jobs that did not end with exit 0, each with
its error line (:func:`mtlser.launch.joblog.failure`). The jobs' logs stay locked by the submitting
launcher until the array ends (:func:`mtlser.launch.joblog.lock_logs`).

The settings come from a conf/slurm.conf (Kaldi style ``key=value`` and
``<stage>.key=value`` lines; that file's header documents every key), read by
:func:`read_settings` and turned into sbatch options by :func:`sbatch_options`.

The job script starts from a clean environment (``--export=NONE``: Slurm loads
the user's login environment), sets the submitting shell's ``MTLSER_*``
variables, and sources the repository's path.sh itself; ``cd`` to the
submission directory. Jobs are submitted with ``--requeue``: when Slurm
requeues one (preemption, node failure, ``scontrol requeue``), it runs again,
its log gets a ``# Requeued`` line, and training resumes from the fold's
checkpoint (a resumed fold ends as an uninterrupted one would; tested on a
local Slurm). ``--no-requeue`` in ``extra`` turns that off.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from mtlser.launch.joblog import failure
from mtlser.utils import MtlserError

#: The job kinds cmd.sh submits: stage 3 (training) and stage 4 (inference).
STAGES = ("train", "decode")
#: conf/slurm.conf keys and what they become.
KEYS = {
    "partition": "--partition",
    "account": "--account",
    "time": "--time",
    "cpus": "--cpus-per-task",
    "mem": "--mem",
    "gres": "--gres",
    "extra": None,
}
#: The repository whose path.sh every job script sources.
ROOT = Path(__file__).resolve().parents[2]


def read_settings(path: str | os.PathLike, stage: str) -> dict[str, str]:
    """The settings of ``stage`` in a conf/slurm.conf: the defaults, then ``<stage>.key`` lines."""
    path = Path(path)
    if stage not in STAGES:
        raise MtlserError(f"Slurm settings of stage '{stage}': expected one of {', '.join(STAGES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise MtlserError(f"{path}: cannot read the Slurm settings ({e.strerror}); see conf/slurm.conf") from None
    common: dict[str, str] = {}
    staged: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        where = f"{path}:{lineno}"
        if not eq:
            raise MtlserError(f"{where}: expected key=value (e.g. train.mem=32G), got '{raw.strip()}'")
        prefix, _, name = key.rpartition(".")
        if prefix and prefix not in STAGES:
            raise MtlserError(f"{where}: '{key}': the part before '.' must be a stage, one of {', '.join(STAGES)}")
        if name not in KEYS:
            raise MtlserError(f"{where}: unknown key '{name}'; known: {', '.join(KEYS)}")
        if name == "cpus" and value and not (value.isdigit() and int(value) > 0):
            raise MtlserError(f"{where}: cpus must be a positive integer, got '{value}'")
        if name == "extra":
            try:
                shlex.split(value)
            except ValueError as e:
                raise MtlserError(f"{where}: extra: {e} (quote as on a command line)") from None
        if prefix == stage:
            staged[name] = value
        elif not prefix:
            common[name] = value
    return {**common, **staged}


def sbatch_options(settings: dict[str, str], ngpu: int = 0) -> list[str]:
    """sbatch options of a stage's settings for jobs of ``ngpu`` GPUs each."""
    opts = ["--export=NONE", "--requeue"]
    for key, flag in KEYS.items():
        value = settings.get(key, "")
        if key == "gres":
            value = value or "gpu:{ngpu}"
            if "{ngpu}" in value:
                value = value.replace("{ngpu}", str(ngpu)) if ngpu > 0 else ""
        if not value:
            continue
        opts += shlex.split(value) if flag is None else [f"{flag}={value}"]
    return opts


def job_script(jobs: dict[int, tuple[Path, list[str]]], cwd: str | os.PathLike, env: dict[str, str]) -> str:
    """A bash script that runs job ``$SLURM_ARRAY_TASK_ID`` of ``jobs`` (task id -> log, command).

    Each job's log is framed as run.pl frames it (command, start, end with exit code);
    a requeued run appends to it.
    """
    q = shlex.quote
    exports = "".join(f"export {k}={q(v)}\n" for k, v in sorted(env.items())
                      if k.startswith("MTLSER_") and k not in ("MTLSER_ROOT", "MTLSER_JOB"))
    cases = "".join(f"    {job}) log={q(str(log))}; cmd=({' '.join(q(c) for c in cmd)}); line={q(shlex.join(cmd))} ;;\n"
                    for job, (log, cmd) in sorted(jobs.items()))
    return (
        "#!/bin/bash\n"
        "# Written by mtlser.launch: runs job $SLURM_ARRAY_TASK_ID of the array.\n"
        f"cd {q(str(cwd))} || exit 1\n"
        'case "${SLURM_ARRAY_TASK_ID}" in\n'
        f"{cases}"
        '    *) echo "no job ${SLURM_ARRAY_TASK_ID} in this array" >&2; exit 1 ;;\n'
        "esac\n"
        'mkdir -p "$(dirname "$log")"\n'
        "# The framing lines start a line of their own, also after a progress bar's last output.\n"
        'newline() { if [ -s "$log" ] && [ -n "$(tail -c 1 "$log")" ]; then echo >> "$log"; fi; }\n'
        'if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then\n'
        '    newline\n'
        '    echo "# Requeued (restart ${SLURM_RESTART_COUNT}) at $(date): runs again, training resumes" >> "$log"\n'
        "else\n"
        '    echo "# ${line}" > "$log"\n'
        '    echo "# Started at $(date)" >> "$log"\n'
        "fi\n"
        'echo "# Slurm job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on $(hostname)" >> "$log"\n'
        f"{exports}"
        "export MTLSER_JOB=${SLURM_ARRAY_TASK_ID}\n"
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}\n"
        f"( . {q(str(ROOT / 'path.sh'))} && \"${{cmd[@]}}\" ) >> \"$log\" 2>&1\n"
        "rc=$?\n"
        "newline\n"
        'echo "# Ended (code $rc) at $(date)" >> "$log"\n'
        "exit $rc\n"
    )


def last_exit_code(log: Path, slurm_job: str | None = None) -> int | None:
    """The exit code of a job's last run, from its log's last ``# Ended (code N)`` line.

    With ``slurm_job`` (e.g. "17_3"), only when that Slurm job wrote the log.
    """
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    if slurm_job is not None and f"# Slurm job {slurm_job} on " not in text:
        return None
    codes = re.findall(r"^# Ended \(code (-?\d+)\)", text, flags=re.M)
    return int(codes[-1]) if codes else None


def in_queue(job_id: str) -> bool:
    """Whether squeue lists any task of Slurm job ``job_id`` (pending, running, completing, requeued)."""
    try:
        r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True)
    except FileNotFoundError:
        return False
    return r.returncode == 0 and bool(r.stdout.strip())


def run_array(jobs: dict[int, tuple[Path, list[str]]], max_jobs: int, options: list[str], job_name: str,
              script_dir: Path) -> list[int]:
    """Submit ``jobs`` (task id -> log, command) as one array and wait; returns the failed task ids."""
    script_dir.mkdir(parents=True, exist_ok=True)
    script = script_dir / f"{job_name}.array.sh"
    script.write_text(job_script(jobs, os.getcwd(), dict(os.environ)))
    lo, hi = min(jobs), max(jobs)
    cmd = ["sbatch", "--wait", f"--array={lo}-{hi}%{max_jobs}", f"--output={script_dir}/slurm-%A_%a.out",
           f"--job-name={job_name}", *options, str(script)]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise MtlserError("sbatch not found: the slurm backend needs Slurm's client commands on PATH "
                          "(tools/start_slurm.sh starts a local Slurm)") from None
    job_id = None

    def exit_code(job: int) -> int | None:  # of this array's run of the job (a log may be an earlier run's)
        return last_exit_code(jobs[job][0], f"{job_id}_{job}") if job_id else None

    def interrupted(*_):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupted)
    # A bar on a terminal; in a log file a plain line whenever a job ends (no carriage returns).
    bar = tqdm(total=len(jobs), desc="jobs done", unit="job", disable=len(jobs) < 2 or not sys.stderr.isatty())
    try:
        line = proc.stdout.readline()  # "Submitted batch job N"; sbatch --wait then waits for the array
        print(line, end="", flush=True)
        m = re.match(r"Submitted batch job (\d+)", line)
        job_id = m.group(1) if m else None
        # sbatch --wait can return while a requeued task is on its way back to the queue (it then looks
        # finished for a moment): the array is done when sbatch has returned and squeue lists none of it.
        while proc.poll() is None or (job_id and in_queue(job_id)):
            done = sum(exit_code(j) is not None for j in jobs)
            if done != bar.n and bar.disable:
                print(f"launch: {done} of {len(jobs)} Slurm jobs done", file=sys.stderr, flush=True)
            bar.n = done
            bar.refresh()
            time.sleep(1)
        print(proc.stdout.read(), end="", flush=True)
        rc = proc.wait()
    except KeyboardInterrupt:
        # Jobs would go on running on the cluster without us: cancel the array.
        if job_id is not None:
            subprocess.call(["scancel", job_id])
            print(f"launch: interrupted; cancelled Slurm job {job_id}", file=sys.stderr)
        proc.send_signal(signal.SIGINT)
        raise
    finally:
        signal.signal(signal.SIGTERM, old)
        bar.close()
    if job_id is None:
        print(f"launch: sbatch could not submit the array (exit {rc}; its message is above): {shlex.join(cmd)}",
              file=sys.stderr)
        return sorted(jobs)
    # Each job's log says how its last run ended (sbatch's exit code is the highest of the array's
    # tasks, and a requeued task's first run may count in it).
    failed = [j for j in sorted(jobs) if exit_code(j) != 0]
    for j in failed:
        log = jobs[j][0]
        out = script_dir / f"slurm-{job_id}_{j}.out"
        code = exit_code(j)
        why = f"exit {code}" if code is not None else "no exit code in its log: killed or never started"
        extra = f" and {out}" if out.is_file() and out.stat().st_size else ""
        print(f"launch: Slurm job {job_id}_{j} failed {failure(log, why)}{extra}", file=sys.stderr)
    return failed
