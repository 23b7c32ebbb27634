#!/usr/bin/env bash
# Runs the fault, crash and hostile-input tests and writes docs/reliability.md from what they observed.
SKIP_CHECKOV=1
source "$(dirname "$0")/_bootstrap.sh"
use_private_tmpdir
RELIABILITY_REPORT="$ROOT/docs/reliability.md" run_child python -m pytest tests/faults -q "$@"
say "wrote docs/reliability.md"
