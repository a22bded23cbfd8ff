#!/usr/bin/env bash
# bash train.sh [CONFIG] [train.py arguments...]
#   CONFIG defaults to config/nyu_b4.py. One process per visible GPU (torchrun), or one CPU process.
#   bash train.sh config/demo.py   runs the demo: synthetic data, RGB teacher, CMX baseline, PrimKD student.
#   NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT: multi-node runs; --port=N sets MASTER_PORT.
set -eo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/tools/setup_env.sh"

primkd_config "$@"
# The official --port (either form) is torchrun's rendezvous port.
previous=
for arg in "${PRIMKD_ARGS[@]}"; do
    case "$arg" in
        --port=*) export MASTER_PORT="${MASTER_PORT:-${arg#--port=}}" ;;
        *) [ "$previous" = --port ] && export MASTER_PORT="${MASTER_PORT:-$arg}" ;;
    esac
    previous="$arg"
done
if [[ "$(basename "$PRIMKD_CONFIG")" == demo.py && " ${PRIMKD_ARGS[*]} " != *" --mode"* ]]; then
    exec "$PYTHON" tools/demo.py --config "$PRIMKD_CONFIG" "${PRIMKD_ARGS[@]}"
fi
primkd_launch train.py --config "$PRIMKD_CONFIG" "${PRIMKD_ARGS[@]}"
