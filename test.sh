#!/usr/bin/env bash
# Runs the test suite: `bash test.sh [pytest arguments]` (e.g. `bash test.sh -m slow`, `-k hha`).
# The fast subset while editing, without the tests that start processes or train, export or
# benchmark real models in-process (markers in pytest.ini):
#   bash test.sh -m "not integration and not heavy and not slow"
# CI runs `bash test.sh`: everything but the slow tests (pytest.ini).
set -eo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/tools/setup_env.sh"
exec "$PYTHON" -m pytest "$@"
