#!/usr/bin/env bash
# Score one fold's decode dir: WA, UA, per-class recall/precision, confusion matrix, CTC token error rate.
# Usage: local/score.sh [--allow-unfinished true] <decode dir> [<reference data dir>]
#        (default references: the data dir stage 4 decoded)
# Writes <decode dir>/result.txt and result.json.
set -euo pipefail
allow_unfinished=false  # score the decode of a model whose training did not finish (ser.sh --allow-unfinished)
. "$(dirname "$(readlink -f "$0")")/../utils/parse_options.sh"
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "Usage: $0 [--allow-unfinished true] <decode dir> [<reference data dir>]" >&2; exit 2
fi
unfinished_opt=""; [ "${allow_unfinished}" != true ] || unfinished_opt=--allow-unfinished
python -m mtlser.score fold ${unfinished_opt} "$1" ${2:+--ref-dir "$2"}
