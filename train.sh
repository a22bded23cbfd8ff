#!/usr/bin/env bash
# bash train.sh [CONFIG] [train.py arguments...]
#   CONFIG defaults to config/nyu_b4.py. One process per visible GPU (torchrun for more than one), or
#   one CPU process; tools/setup_env.sh (primkd_launch) has the details.
#   bash train.sh config/demo.py   runs the demo: synthetic data, RGB teacher, CMX baseline, PrimKD student.
#   NNODES / NODE_RANK / MASTER_ADDR: multi-node runs; MASTER_PORT or --port=N: a fixed rendezvous port.
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
    # The demo's single processes would refuse unusable GPUs too, but only after generating its data.
    "$PYTHON" -m engine.devices "${PRIMKD_ARGS[@]}" > /dev/null || exit 2
    exec "$PYTHON" tools/demo.py --config "$PRIMKD_CONFIG" "${PRIMKD_ARGS[@]}"
fi
primkd_launch train.py --config "$PRIMKD_CONFIG" "${PRIMKD_ARGS[@]}"
