"""Diagnostics on cells: the largest Lyapunov exponent and the Newton iterations it predicts."""
from .lyapunov import (LyapunovEstimate, largest_lyapunov_exponent,  # noqa: F401
                       predicted_newton_iterations)
