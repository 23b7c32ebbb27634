#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest (which starts Azurite and the HTTPS stand-ins on free
# ports and stops them after). Extra arguments go to pytest, e.g. scripts/test.sh -k pipeline.
# checkov (its own virtual environment, the slowest install) only when the infrastructure tests may run:
# the whole suite, or a selection that names tests/infra.
if [[ -z "${SKIP_CHECKOV:-}" ]]; then
  SKIP_CHECKOV=0
  paths=()
  for arg in "$@"; do [[ "$arg" == tests* ]] && paths+=("$arg"); done
  if [[ ${#paths[@]} -gt 0 ]]; then
    SKIP_CHECKOV=1
    for path in "${paths[@]}"; do [[ "$path" == tests || "$path" == tests/ || "$path" == tests/infra* ]] && SKIP_CHECKOV=0; done
  fi
fi
source "$(dirname "$0")/_bootstrap.sh"
use_private_tmpdir
# The tools' caches go with the private TMPDIR, not into the checkout.
export MYPY_CACHE_DIR="$TMPDIR/mypy" RUFF_CACHE_DIR="$TMPDIR/ruff" HYPOTHESIS_STORAGE_DIRECTORY="$TMPDIR/hypothesis"

say "ruff"
run_child ruff check .
say "mypy"
run_child mypy
say "pytest"
status=0
run_child python -m pytest -p no:cacheprovider "$@" || status=$?
# pytest exits 5 when nothing was collected: that is a failure here, not a pass.
exit "$status"
