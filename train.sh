#!/usr/bin/env bash
# bash train.sh [CONFIG] [train.py arguments...]
#   CONFIG defaults to config/nyu_b4.py. One process per visible GPU (torchrun), or one CPU process.
#   bash train.sh config/demo.py   runs the demo: synthetic data, teacher, student, evaluation.
#   NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT: multi-node runs; --port=N sets MASTER_PORT.
set -eo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/tools/setup_env.sh"

config=config/nyu_b4.py
if [[ "${1:-}" == *.py ]]; then
    config="$1"
    shift
fi
for arg in "$@"; do
    case "$arg" in
        --port=*) export MASTER_PORT="${MASTER_PORT:-${arg#--port=}}" ;;
    esac
done
if [[ "$(basename "$config")" == demo.py && " $* " != *" --mode"* ]]; then
    exec "$PYTHON" tools/demo.py --config "$config" "$@"
fi
primkd_launch train.py --config "$config" "$@"
