"""Tools: pruning (``prune``, ``prune_graphs``, ``lattice``), training-free scoring (``score``),
state-regularised automata extraction (``automata``), state capacity and collapse
(``capacity``, ``collapse``); Lyapunov exponents and the Newton iterations they predict; JRT-Prompt
(read the context twice); checkpoints, schedules and atomic files for the trainers. Each tool's
commands are in its ``*_cli.py`` (``register(app, eval_app)``)."""
from .jrt import RepeatedContext, context_len, repeat_context  # noqa: F401
from .lyapunov import (LyapunovEstimate, largest_lyapunov_exponent,  # noqa: F401
                       predicted_newton_iterations)
