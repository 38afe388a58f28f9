"""The arena: train models × tasks × seeds on the diagnostic tasks and report."""
from .config import PRESETS, ArenaConfig, preset  # noqa: F401
from .runner import ArenaFailed, run_arena  # noqa: F401
