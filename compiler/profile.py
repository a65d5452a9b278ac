"""Where a compiled kernel spends its time: cycles per top-level statement.

    import autograph as ag
    from compiler.profile import profile, format_profile
    f = ag.function(inputs, outputs, backend="llvm")
    print(format_profile(profile(f, *arrays, calls=50)))

The kernel is built again with `codegen.PROFILE` on (each top-level statement of the
loop IR between two reads of the CPU's cycle counter) and called on one thread,
whole (no shards, no worker), `calls` times. A loop counts as one statement. The
times are the cycle shares scaled to the measured time of a call. A development
tool: the profiled kernel is what the usual one is, statement by statement, except
that statements it emits together (a B = 1 step split by hidden unit, two `dots`
reading one row) run one by one.
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import numpy as np

from . import codegen
from .jit import Kernel
from .loopir import Loop, _format_body


@dataclass
class Line:
    text: str          # the statement (its first line; a loop: its header)
    seconds: float     # per call
    share: float       # of the statements' cycles


def profile(function, *args, calls: int = 20) -> list:
    """[Line] for each top-level statement of `function`'s kernel (an
    `autograph.Function` on the llvm backend) run on `args` (as the function takes
    them, by position) `calls` times after one warm-up call."""
    kernel = getattr(function.runner, "kernel", None)
    if not isinstance(kernel, Kernel):
        raise ValueError("profile needs a function compiled by the llvm backend "
                         "(ag.function(..., backend=\"llvm\"))")
    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    old = codegen.PROFILE
    codegen.PROFILE = True
    try:
        probe = Kernel(kernel.graph, kernel.prog)
    finally:
        codegen.PROFILE = old
    arrays = [np.ascontiguousarray(a) for a in args]
    dims = probe.check_args(arrays)
    body = kernel.prog.body
    table = (ctypes.c_int64 * (len(body) + 1)).from_address(
        probe.engine.get_global_value_address(codegen.PROFILE_SYMBOL))
    probe.run(arrays, dims)
    ctypes.memset(table, 0, ctypes.sizeof(table))
    t0 = time.perf_counter()
    for _ in range(calls):
        probe.run(arrays, dims)
    wall = (time.perf_counter() - t0) / calls
    cycles = np.array(table[:len(body)], dtype=np.float64)
    assert table[len(body)] == calls, "the profiled kernel did not count its calls"
    total = cycles.sum() or 1.0
    lines = []
    for s, c in zip(body, cycles):
        text = _format_body([s], 0)[0]
        if isinstance(s, Loop):
            text += f" ({sum(1 for _ in s.body)} statements)"
        lines.append(Line(text, wall * c / total, c / total))
    return lines


def format_profile(lines, width: int = 110) -> str:
    """The profile as text, one statement a line, the costliest marked."""
    out = []
    for ln in lines:
        text = ln.text if len(ln.text) <= width else ln.text[:width - 1] + "…"
        out.append(f"{ln.seconds * 1e6:10.1f} µs {ln.share:6.1%}  {text}")
    return "\n".join(out)
