# Sourced by train.sh, val.sh and test.sh: sets PYTHON to the interpreter the project runs with.
#
# * Inside an activated virtualenv or conda env, or with PRIMKD_NO_VENV=1, that environment's
#   `python` is used as it is and nothing is installed; the repository goes first on PYTHONPATH, so the
#   scripts run this checkout's packages whether or not the project is installed there.
# * Otherwise the project's own environment .venv/ is created on first use and holds exactly the
#   tested set: requirements-lock.txt installed hash-checked, pip-sync removing what is not in it,
#   then the project itself, editable. Later runs reuse it and reinstall only when the lock or
#   pyproject.toml changed.
# PRIMKD_PYTHON chooses the interpreter that creates .venv (default: python3).

_primkd_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ "${PRIMKD_NO_VENV:-0}" = "1" ] || [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
    PYTHON="$(command -v python || command -v python3)"
    if [ -z "$PYTHON" ]; then
        echo "error: no python found in the active environment (PATH=$PATH)" >&2
        exit 1
    fi
    export PYTHONPATH="$_primkd_root${PYTHONPATH:+:$PYTHONPATH}"
else
    _venv="$_primkd_root/.venv"
    _lock="$_primkd_root/requirements-lock.txt"
    _stamp="$_venv/.lock.sha256"
    _want="$(cat "$_primkd_root/pyproject.toml" "$_lock" | sha256sum | cut -d' ' -f1)"
    if [ ! -x "$_venv/bin/python" ]; then
        echo ">> creating the project environment in $_venv" >&2
        "${PRIMKD_PYTHON:-python3}" -m venv "$_venv" || {
            echo "error: could not create $_venv with ${PRIMKD_PYTHON:-python3} -m venv" >&2
            exit 1
        }
    fi
    if [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
        echo ">> installing requirements-lock.txt and the project (editable) into $_venv" >&2
        rm -f "$_stamp"
        # pip installs the lock first because pip-sync (pip-tools, itself in the lock) is not there on
        # the first run; the project is built offline by the locked setuptools.
        { "$_venv/bin/python" -m pip install --disable-pip-version-check --require-hashes -r "$_lock" &&
            "$_venv/bin/python" -m piptools sync "$_lock" &&
            "$_venv/bin/python" -m pip install --disable-pip-version-check --no-deps --no-build-isolation \
                -e "$_primkd_root"; } >&2 || {
            echo "error: installing the environment failed (the installer's message is above); fix it and run again" >&2
            exit 1
        }
        echo "$_want" > "$_stamp"
    fi
    PYTHON="$_venv/bin/python"
fi
export PYTHON
cd "$_primkd_root"

# primkd_config "$@": PRIMKD_CONFIG = the first argument if it is a .py config file (default
# config/nyu_b4.py), PRIMKD_ARGS = the remaining arguments.
primkd_config() {
    PRIMKD_CONFIG=config/nyu_b4.py
    PRIMKD_ARGS=("$@")
    if [[ "${1:-}" == *.py ]]; then
        PRIMKD_CONFIG="$1"
        PRIMKD_ARGS=("${@:2}")
    fi
}

# primkd_launch SCRIPT [ARGS...]: one process per GPU that torch sees (CUDA_VISIBLE_DEVICES chooses
# them), or one CPU process on a machine without GPUs; the script itself for one process, torchrun for
# more. A GPU machine whose GPUs torch cannot use stops here, before any work (engine/devices.py says
# why). One node takes a free rendezvous port (torchrun --standalone), so runs side by side do not
# collide, unless MASTER_PORT asks for one. Several nodes (NNODES, NODE_RANK: the same command on
# each) meet at MASTER_ADDR, the address of node 0, on MASTER_PORT (default 29500).
# PRIMKD_TORCHRUN=1 starts torchrun for a single process too (one GPU or the CPU), and that process
# joins a process group (NCCL on a GPU, gloo on the CPU): DDP and SyncBatchNorm as on several GPUs.
primkd_launch() {
    local script="$1"; shift
    local nnodes="${NNODES:-1}" ngpu rendezvous
    if ! [[ "$nnodes" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: NNODES=$nnodes: expected the number of nodes, a positive integer" >&2
        exit 2
    fi
    if [ "$nnodes" -gt 1 ] && [ -z "${MASTER_ADDR:-}" ]; then
        echo "error: NNODES=$nnodes needs MASTER_ADDR, the address of the node with NODE_RANK=0, on every node" >&2
        exit 2
    fi
    ngpu=$("$PYTHON" -m engine.devices "$@") || exit 2
    if [ "$nnodes" -eq 1 ] && [ "$ngpu" -le 1 ] && [ "${PRIMKD_TORCHRUN:-0}" != 1 ]; then
        exec "$PYTHON" "$script" "$@"
    fi
    if [ "$nnodes" -eq 1 ] && [ -z "${MASTER_PORT:-}" ]; then
        rendezvous=(--standalone)
    else
        rendezvous=(--nnodes="$nnodes" --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}"
                    --master_port="${MASTER_PORT:-29500}")
    fi
    exec "$PYTHON" -m torch.distributed.run "${rendezvous[@]}" --nproc_per_node="$(( ngpu > 0 ? ngpu : 1 ))" \
        "$script" "$@"
}
