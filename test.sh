#!/usr/bin/env bash
# Runs the test suite: `bash test.sh [pytest arguments]` (e.g. `bash test.sh -m slow`, `-k hha`).
set -eo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/tools/setup_env.sh"
exec "$PYTHON" -m pytest "$@"
