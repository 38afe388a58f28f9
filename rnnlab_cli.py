"""The ``rnnlab`` console script.

rnnlab's own processes (``rnnlab arena``, ``train``, ``bench`` and the workers they spawn, which
inherit the environment) allocate large fresh tensors, and on Linux each 4 KB page of a fresh
buffer costs a page fault: on a 2-core machine a fresh 256 MB output cost as much as the work done
in it. ``THP_MEM_ALLOC_ENABLE=1`` makes torch's CPU allocator align large buffers for transparent
huge pages (2 MB), which about doubles the throughput of memory-bound ops on fresh buffers there.
torch reads it once, so it must be set before torch is imported; importing ``rnnlab`` imports
torch, hence this module outside the package. It only fills in a value the user did not set
(``THP_MEM_ALLOC_ENABLE=0 rnnlab ...`` opts out). The library, imported by a user's program,
changes no process-wide setting.
"""
import os


def main() -> None:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    from rnnlab.cli import app
    app()


if __name__ == "__main__":
    main()
