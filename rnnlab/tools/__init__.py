"""Tools: Lyapunov exponents and the Newton iterations they predict; JRT-Prompt (read the
context twice); checkpoints, schedules and atomic files for the trainers."""
from .lyapunov import (LyapunovEstimate, largest_lyapunov_exponent,  # noqa: F401
                       predicted_newton_iterations)
from .jrt import RepeatedContext, context_len, repeat_context  # noqa: F401,E402
