"""Sequential-engine GRU vs torch.nn.GRU vs a GRUCell loop (B=8, T=1024, H=128, fp32).

Usage: python bench/sequential_gru.py [OUT.json]   (same as `rnnlab bench sequential --out OUT`)
Run it on an otherwise idle machine: a second busy process makes OpenMP threads spin and the
timings meaningless.
"""
import sys
from pathlib import Path

from rnnlab.benchmarks.cli import bench_sequential

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "bench/out/sequential_gru.json"
    bench_sequential(out=Path(out))
