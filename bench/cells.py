"""Every registered cell x every engine that runs it: forward and forward+backward time, bytes
held for the backward, and speed-ups against the cell's own sequential engine and against the
sequential GRU of the same width, all measured in one run (B8 T1024 D128 and B32 T128 D256).

Usage: python bench/cells.py [OUT.json]   (writes bench/out/cells.json by default)
Run it on an otherwise idle machine. `rnnlab bench cells --help` has the options (sizes, cells,
engines, threads).
"""
import sys

from rich.console import Console

from rnnlab.benchmarks import cells
from rnnlab.benchmarks.timing import write_json

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "bench/out/cells.json"
    console = Console()
    result = cells.run()
    cells.print_table(result, console)
    console.print(f"wrote {write_json(result, out)}")
