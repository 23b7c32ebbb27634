#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest (which starts Azurite and the HTTPS stand-ins on free
# ports and stops them after). Extra arguments go to pytest, e.g. scripts/test.sh -k pipeline.
source "$(dirname "$0")/_bootstrap.sh"

say "ruff"
ruff check .
say "mypy"
mypy
say "pytest"
set +e
python -m pytest "$@"
status=$?
set -e
# pytest exits 5 when nothing was collected: that is a failure here, not a pass.
exit "$status"
