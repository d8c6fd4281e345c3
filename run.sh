#!/usr/bin/env bash
# The default recipe, the embedded mini corpus (egs/mini): installs on first use,
# then runs the stages, e.g.  ./run.sh --stage 0 --stop-stage 5
# Outputs land in egs/mini/data and egs/mini/exp. The paper's recipe: egs/iemocap.
exec "$(dirname "$(readlink -f "$0")")/egs/mini/run.sh" "$@"
