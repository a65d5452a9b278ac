"""Where a compiled kernel spends its time: cycles per top-level statement.

    import autograph as ag
    from compiler.profile import profile, format_profile
    f = ag.function(inputs, outputs, backend="llvm")
    print(format_profile(profile(f, *arrays, calls=50)))

The kernel is built again with `codegen.PROFILE` on (each top-level statement of the
loop IR, and each statement of a loop's body, between two reads of the CPU's cycle
counter) and called on one thread, whole (no shards, no worker), `calls` times. The
times are the cycle shares scaled to the measured time of a call; a loop's line
includes its body's (and the counter reads in it: ~20–40 cycles a statement a step,
which weigh on loops of short steps). A development
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
    share: float       # of the top-level statements' cycles
    depth: int = 0     # loops around it (a loop's line includes its body's)


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
    arrays = [np.ascontiguousarray(a) for a in args]
    dims = kernel.check_args(arrays)          # bad arguments fail before any compile
    old = codegen.PROFILE
    codegen.PROFILE = True
    try:
        probe = Kernel(kernel.graph, kernel.prog)
    finally:
        codegen.PROFILE = old
    order = list(_walk_depth(kernel.prog.body, 0))
    n = len(order)
    table = (ctypes.c_int64 * (n + 1)).from_address(
        probe.engine.get_global_value_address(codegen.PROFILE_SYMBOL))
    probe.run(arrays, dims)
    ctypes.memset(table, 0, ctypes.sizeof(table))
    t0 = time.perf_counter()
    for _ in range(calls):
        probe.run(arrays, dims)
    wall = (time.perf_counter() - t0) / calls
    assert table[n] == calls, "the profiled kernel did not count its calls"
    cycles = np.array(table[:n], dtype=np.float64)
    total = sum(c for (s, depth), c in zip(order, cycles) if depth == 0) or 1.0
    lines = []
    for (s, depth), c in zip(order, cycles):
        text = _format_body([s], 0)[0]
        if isinstance(s, Loop):
            text += f" ({len(s.body)} statements)"
        lines.append(Line(text, wall * c / total, c / total, depth))
    return lines


def _walk_depth(body, depth):
    """(statement, depth) in `loopir.walk` order."""
    for s in body:
        yield s, depth
        if isinstance(s, Loop):
            yield from _walk_depth(s.body, depth + 1)


def format_profile(lines, width: int = 110) -> str:
    """The profile as text, one statement a line, the costliest marked."""
    out = []
    for ln in lines:
        text = ln.text if len(ln.text) <= width else ln.text[:width - 1] + "…"
        out.append(f"{ln.seconds * 1e6:10.1f} µs {ln.share:6.1%}  {'  ' * ln.depth}{text}")
    return "\n".join(out)
