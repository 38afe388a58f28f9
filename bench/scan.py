"""Diagonal linear scan: linear_scan forward and forward+backward vs copy bandwidth and a naive
torch loop (B=16, T=1024/4096/16384, D=256, fp32).

Usage: python bench/scan.py [OUT.json]   (writes bench/out/scan.json by default)
Run it on an otherwise idle machine: copy bandwidth and the scan share the memory bus, and a
second busy process makes every number here move.
"""
import sys

from rich.console import Console

from rnnlab.benchmarks import scan
from rnnlab.benchmarks.timing import write_json

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "bench/out/scan.json"
    console = Console()
    result = scan.run(batch=16, lengths=(1024, 4096, 16384), width=256, repeats=3)
    scan.print_table(result, console)
    console.print(f"wrote {write_json(result, out)}")
