#!/usr/bin/env bash
# The demo: the whole pipeline against Azurite and local HTTPS stand-ins of the Microsoft services.
# Options go to the demo, e.g. scripts/demo.sh --records 50000 --alerts-only
SKIP_CHECKOV=1
source "$(dirname "$0")/_bootstrap.sh"
use_private_tmpdir
run_child python -m standins.demo "$@"
