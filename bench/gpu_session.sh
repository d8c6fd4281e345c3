#!/usr/bin/env bash
# The GPU measurement in one command, on the project's GPU machine: one H200, Python 3.12 with
# torch 2.11, torchaudio 2.11, transformers, numpy, pyyaml, safetensors, tqdm, pytest preinstalled,
# no network. What it lacks (bench/gpu_wheels.txt) travels as wheels in bench/.wheels (git-ignored).
#
#   bench/gpu_session.sh --fetch     # here, where PyPI is reachable: cp312 manylinux x86_64 wheels -> bench/.wheels
#   bench/gpu_session.sh OUT_DIR     # there: install them, GPU tests, benchmark, one JSON (OUT_DIR/gpu_session.json)
#
# There, from a copy of the working tree with bench/.wheels in it, within 600 s:
#     MTLSER_COMMIT=<git rev-parse --short HEAD> bash bench/gpu_session.sh OUT_DIR
# (the copy may have no .git: the commit is passed).
# It should take about 5 minutes and at most 8: each stage has a time limit, and the benchmark writes its
# JSON after every round, so a cut-short run still reports what it measured.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
wheels=${root}/bench/.wheels
py=${MTLSER_GPU_PYTHON:-python3}

# The carried packages with their versions: tools/requirements.txt's pin, or the one in gpu_wheels.txt.
carried() {
    local name pin
    while read -r name; do
        case ${name} in
            *==*) echo "${name}" ;;
            *) pin=$(grep -E "^${name}==" "${root}/tools/requirements.txt") || {
                   echo "bench/gpu_wheels.txt: ${name} has no pin in tools/requirements.txt" >&2; return 1; }
               echo "${pin}" ;;
        esac
    done < <(grep -vE '^[[:space:]]*(#|$)' "${root}/bench/gpu_wheels.txt")
}

if [ "${1:-}" = "--fetch" ]; then
    specs=$(carried)
    rm -rf "${wheels}"
    mkdir -p "${wheels}"
    for spec in ${specs}; do
        # pip matches manylinux tags exactly, so name each; no dependencies
        # (the machine has them; gpu_wheels.txt lists the ones it lacks).
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "${wheels}" "${spec}"
    done
    ls -l "${wheels}"
    du -sh "${wheels}"
    exit 0
fi
[ $# -eq 1 ] || { sed -n '2,12p' "$0"; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "${root}"
t_start=$(date +%s)
log() { echo "[$(date +%T) +$(( $(date +%s) - t_start ))s] $*"; }

[ -d "${wheels}" ] || { echo "no ${wheels}: run $0 --fetch where PyPI is reachable, then carry bench/.wheels" >&2
                        exit 1; }
log "$(${py} --version); $(nproc) cores"
nvidia-smi > "${out}/nvidia-smi.txt" 2>&1 || true
site=${TMPDIR:-/tmp}/mtlser_gpu_site   # beside the machine's own packages, not instead of them
${py} -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "${site}" \
    "${wheels}"/*.whl
export PYTHONPATH=${root}:${site}
export PYTHONUNBUFFERED=1
# The environment record a model dir's env.json holds (mtlser.expdir), with the carried packages' versions.
${py} -c 'import json, torch, soundfile, kaldiio, transformers
from mtlser.expdir import environment
assert torch.cuda.is_available(), "no GPU visible"
print(json.dumps({**environment(), "transformers": transformers.__version__, "soundfile": soundfile.__version__}))' \
    | tee "${out}/environment.json"

# 1. The GPU tests: the attention kernel with our padding mask, the bf16 path with the CNN levers, the
#    fused norm on CUDA, host syncs per step (numbers recorded in the JUnit XML).
log "GPU tests"
rc_tests=0
timeout 100 ${py} -m pytest -q -p no:cacheprovider -rA -k on_gpu tests/test_speed.py \
    --junitxml="${out}/gpu_tests.xml" > "${out}/gpu_tests.log" 2>&1 || rc_tests=$?
tail -n 12 "${out}/gpu_tests.log"

# The first-layer norm + GELU alone (row by row, fused, batch-wide), base-sized channels, ~7.5 s rows.
log "CNN norm"
rc_norm=0
timeout 45 ${py} bench/cnn_norm.py --device cuda --scale 4 --json "${TMPDIR:-/tmp}/cnn_norm.json" || rc_norm=$?

# 2. The benchmark, paper setting and frozen CNN, against the plain and the tuned HF baselines, with the
#    CNN-trained path's levers as extra variants, interleaved; then one step at 16 x 20 s per mtlser
#    variant for the peak memory.
log "benchmark"
levers=backbone.cnn_norm_impl=fused,train.defer_host_sync=true,data.num_workers=4
rc_bench=0
timeout 290 ${py} bench/train_throughput.py --device cuda --json "${out}/bench.json" --rounds 3 --steps 48 \
    --add "levers=mtlser,${levers}" \
    --add "levers_channels_last=mtlser,${levers},backbone.cnn_channels_last=true" \
    --add "levers_cnn_fp32=mtlser,${levers},backbone.cnn_precision=fp32" \
    --add "levers_cudnn_benchmark=mtlser,${levers},train.cudnn_benchmark=true" \
    --add "cached_levers=mtlser_cached,train.defer_host_sync=true,data.num_workers=4" \
    > "${out}/bench.log" 2>&1 || rc_bench=$?
grep -v 'batch/s' "${out}/bench.log" | tail -n 24

# 3. One JSON: versions, stage exit codes, test outcomes and recorded numbers, the benchmark's results.
log "report"
RC_TESTS=${rc_tests} RC_BENCH=${rc_bench} RC_NORM=${rc_norm} NORM_JSON=${TMPDIR:-/tmp}/cnn_norm.json OUT=${out} T_START=${t_start} ${py} - <<'EOF'
import json, os, time
import xml.etree.ElementTree as ET

out = os.environ["OUT"]
environment = json.load(open(f"{out}/environment.json"))
report = {"commit": environment["git_commit"], "environment": environment,
          "exit_codes": {"gpu_tests": int(os.environ["RC_TESTS"]), "cnn_norm": int(os.environ["RC_NORM"]),
                         "benchmark": int(os.environ["RC_BENCH"])},
          "elapsed_s": time.time() - int(os.environ["T_START"])}
tests = {}
try:
    for case in ET.parse(f"{out}/gpu_tests.xml").iter("testcase"):
        outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else (
            "skipped" if case.find("skipped") is not None else "passed")
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        tests[case.get("name")] = {"outcome": outcome, **props}
except (OSError, ET.ParseError) as e:
    tests["error"] = str(e)
report["gpu_tests"] = tests
try:
    report["cnn_norm"] = json.load(open(os.environ["NORM_JSON"]))
except (OSError, ValueError) as e:
    report["cnn_norm"] = {"error": str(e)}
try:
    report["benchmark"] = json.load(open(f"{out}/bench.json"))
except (OSError, ValueError) as e:
    report["benchmark"] = {"error": str(e)}
json.dump(report, open(f"{out}/gpu_session.json", "w"), indent=1)
print(f"wrote {out}/gpu_session.json: tests", {k: v.get("outcome") for k, v in tests.items()},
      "| targets", report["benchmark"].get("targets"))
EOF
log "done (tests exit ${rc_tests}, CNN norm exit ${rc_norm}, benchmark exit ${rc_bench})"
