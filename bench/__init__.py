"""The benchmark: the connector against the seed-style baseline and the bare work (issue 8).

Run it with ``scripts/bench.sh`` (or ``python -m bench``); see the Benchmark section of README.md.
"""
