#!/usr/bin/env bash
# The test suite: installs what it needs on first use (tools/install.sh --with-test),
# then runs pytest. Exit status is pytest's: non-zero when a test fails.
#   tests/run.sh                 # everything (unit, bad input, end to end): a few minutes on 2 cores
#   tests/run.sh -m "not slow"   # skip the end-to-end recipe runs
#   tests/run.sh tests/test_datadir.py -k sorted   # any pytest arguments
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"${root}/tools/install.sh" --with-test
cd "${root}"
. ./path.sh
exec python -m pytest "$@"
