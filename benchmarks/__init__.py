"""The measurements behind BENCHMARKS.md: one module per benchmark, run from the repository root.

    python -m benchmarks.retrieval --help

``benchmarks.harness`` holds what they share (argument parser, commit, records, progress); their records land
in ``benchmarks/results/``. The scripts that run them on the lent GPU machines live in ``tools/device/``.
"""
