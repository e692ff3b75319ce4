"""The benchmark suite: the performance scenarios P1-P8 of spec/05-quality.md, and S1
(scheduling precision at light load).

Each scenario starts its own real server (and through it the local agent) in a
temporary directory, drives a workload over the REST API on 127.0.0.1, measures,
and stops every process it started. `python -m bench [P1 ...] [--quick]` runs them
and writes `bench/results/latest.json` plus a timestamped copy.
"""
