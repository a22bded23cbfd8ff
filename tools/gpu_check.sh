#!/usr/bin/env bash
# bash tools/gpu_check.sh OUT_DIR [--budget SECONDS] [--work DIR] [--rehearse]
#   The one-command check of the GPU training path on one GPU (tools/gpu_check.py, docs/gpu_check.md):
#   benchmarks, a short NCCL + SyncBatchNorm + compile training run, its resume and evaluation; a
#   summary table, exit status 1 naming any stage that failed. GPU_CHECK_REHEARSE=1 (or --rehearse)
#   runs every stage on the CPU at tiny sizes. Relative paths are taken from the current folder.
set -eo pipefail
args=()
previous=
positional=0
for arg in "$@"; do
    # OUT_DIR and the --work folder as absolute paths: setup_env.sh changes to the repository root.
    if [ "$previous" = --work ] || { [[ "$arg" != -* && "$previous" != --budget ]] && [ "$positional" -eq 0 ] && positional=1; }; then
        arg="$(realpath -m -- "$arg")"
    fi
    args+=("$arg")
    previous="$arg"
done
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
exec "$PYTHON" tools/gpu_check.py "${args[@]}"
