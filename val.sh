#!/usr/bin/env bash
# bash val.sh [CONFIG] [val.py arguments...]
#   CONFIG defaults to config/nyu_b4.py. One process per visible GPU (CUDA_VISIBLE_DEVICES chooses them;
#   torchrun for more than one), or one CPU process without GPUs. For example
#   bash val.sh config/nyu_b4.py -e pretrained/primkd/nyu_b4.pth --scales 0.75 1 1.25 --flip
set -eo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/tools/setup_env.sh"

primkd_config "$@"
primkd_launch val.py --config "$PRIMKD_CONFIG" "${PRIMKD_ARGS[@]}"
