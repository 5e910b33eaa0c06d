"""Shared timing helper for the benchmark scripts."""
import time

import jax
import numpy as np


def time_it(fn, repeats):
    """Median wall time of ``fn()`` over ``repeats`` calls (results blocked on), and the last result."""
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), out
