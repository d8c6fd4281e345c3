# Sourced by run.sh, the recipes and tests/run.sh: activates the venv that
# tools/install.sh made and puts the repo on PYTHONPATH. Recipes symlink it.
MTLSER_ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
export MTLSER_ROOT
# Kaldi's contract: sorted means sorted in the C locale.
export LC_ALL=C
export PYTHONIOENCODING=UTF-8
export PYTHONNOUSERSITE=1
MTLSER_VENV=${MTLSER_VENV:-${MTLSER_ROOT}/tools/venv}
if [ ! -x "${MTLSER_VENV}/bin/python" ]; then
    echo "path.sh: no virtual environment at ${MTLSER_VENV}; run ${MTLSER_ROOT}/tools/install.sh" >&2
    return 1
fi
export MTLSER_VENV
export VIRTUAL_ENV=${MTLSER_VENV}
export PATH=${MTLSER_VENV}/bin:${MTLSER_ROOT}/egs/TEMPLATE/utils:${PATH}
export PYTHONPATH=${MTLSER_ROOT}${PYTHONPATH:+:${PYTHONPATH}}
export NLTK_DATA=${MTLSER_VENV}/nltk_data
