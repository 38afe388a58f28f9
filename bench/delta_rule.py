"""Chunked delta rule vs its loop reference (B=4, T=4096, H=4, K=V=64, fp32).

Usage: python bench/delta_rule.py [OUT.json]   (same as `rnnlab bench delta-rule --out OUT`)
"""
import sys
from pathlib import Path

from rnnlab.benchmarks.cli import bench_delta_rule

if __name__ == "__main__":
    bench_delta_rule(out=Path(sys.argv[1] if len(sys.argv) > 1 else "bench/out/delta_rule.json"))
