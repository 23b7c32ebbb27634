#!/usr/bin/env bash
# The benchmark: the connector against the seed-style baseline and the bare work, on Azurite and the
# HTTPS stand-ins. Writes bench/results/latest.json, latest.md and latest.png (see README, Benchmark).
# Options go to the benchmark, e.g. scripts/bench.sh --records 50000 --profiles none --scales ''
SKIP_CHECKOV=1
source "$(dirname "$0")/_bootstrap.sh"
# A private TMPDIR, removed when the script ends (a kill too): the emulator's data of a killed run goes with it.
use_private_tmpdir
run_child python -m bench "$@"
