#!/usr/bin/env bash
# Score one fold's decode dir: WA, UA, per-class recall/precision, confusion matrix, CTC token error rate.
# Usage: local/score.sh <decode dir> [<reference data dir>]   (default: the dir stage 4 decoded)
# Writes <decode dir>/result.txt and result.json.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "Usage: $0 <decode dir> [<reference data dir>]" >&2; exit 2
fi
python -m mtlser.score fold "$1" ${2:+--ref-dir "$2"}
