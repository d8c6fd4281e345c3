#!/usr/bin/env bash
# Issue 5's GPU check in one command, for a GPU machine that has torch + torchaudio but no network.
#
#   bench/gpu_session.sh --fetch [3.11] # here (PyPI reachable): wheels of what the benchmark needs for that
#                                       #   Python version (the GPU machine's) -> bench/.wheels (~47 MB)
#   bench/gpu_session.sh OUT_DIR        # on the GPU machine (carry bench/.wheels, git-ignored, along):
#                                       #   installs them next to its torch, then the benchmark
#                                       #   (OUT_DIR/cuda.json, cuda.log) and tests/test_speed.py
#
# Versions are the pins of tools/requirements*.txt (torch and torchaudio excluded: the machine's own).
# Extra arguments after OUT_DIR go to bench/train_throughput.py (e.g. --procs 4).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
wheels=${root}/bench/.wheels
pins() {
    grep -hE '^(numpy|soundfile|kaldiio|pyyaml|safetensors|tqdm|transformers|pytest)==' \
        "${root}/tools/requirements.txt" "${root}/tools/requirements-test.txt"
}

if [ "${1:-}" = "--fetch" ]; then
    mkdir -p "${wheels}"
    # shellcheck disable=SC2046
    pip download -q -d "${wheels}" --only-binary=:all: --python-version "${2:-3.11}" \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        $(pins)
    du -sh "${wheels}"
    exit 0
fi
[ $# -ge 1 ] || { sed -n '2,11p' "$0"; exit 2; }
out=$1
shift
mkdir -p "${out}"
[ -d "${wheels}" ] || { echo "no ${wheels}: run $0 --fetch on a machine with PyPI, then carry bench/.wheels" >&2; exit 1; }
python3 --version
python3 -c 'import torch, torchaudio; assert torch.cuda.is_available(), "no GPU visible"' || exit 1
libs=${TMPDIR:-/tmp}/mtlser_gpu_pylibs   # next to the machine's torch and torchaudio, not instead of them
# shellcheck disable=SC2046
python3 -m pip install -q --no-index --find-links "${wheels}" --target "${libs}" $(pins) || {
    echo "installing from ${wheels} failed: fetched for another Python? ($0 --fetch $(python3 -c \
'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'))" >&2; exit 1; }
cd "${root}"
export PYTHONPATH=${root}:${libs}
nvidia-smi > "${out}/nvidia-smi.txt" 2>&1 || true
python3 bench/train_throughput.py --device cuda --json "${out}/cuda.json" "$@" 2>&1 | tee "${out}/cuda.log"
# The trainer tests need matplotlib (training curves), which is not carried; they are CPU checks anyway.
python3 -m pytest -q tests/test_speed.py -k "not trainer" 2>&1 | tail -n 15 | tee "${out}/test_speed.log"
