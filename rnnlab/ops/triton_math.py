"""Pointwise functions shared by rnnlab's Triton kernels (``@triton.jit``, inlined by callers)."""
import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))  # in (0, 1]: no overflow
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)
