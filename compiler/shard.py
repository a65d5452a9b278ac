"""Batch sharding: one call of a kernel as parallel calls on slices of the batch.

A training step is separable along its batch dim B when every output is one of

* **batched** — each row along B depends only on the same rows of the inputs
  (activations, per-example losses): the shards' outputs are concatenated;
* **summed** over the batch — a linear sum of per-row terms (weight gradients,
  a summed loss): the shards' outputs are added;
* **free** of the batch (depends on no batched input): any shard's output is it.

Each may also be scaled by a power of B, because a mean divides by the size that
`shape_size` reads when the graph runs: in a shard it reads B_i, not B. A value
that behaves like B^-e · (its kind) is recombined with the factor (B_i / B)^e.

`analyze` proves this from the graph (the core graph, before compiler rewrites),
op by op, with a rule per op; an op without a rule, a nonlinear function of a
sum (a global-norm clip in the graph), a max over the batch and the like make the
graph not separable, and it then always runs as one call. The proof does not
depend on the compiler: the same kernel (B is a runtime dim) runs every shard,
on threads of one process, each with its own scratch memory: the caller's thread
runs one shard, and `spin.Worker` threads run the others entirely in native code
(posted and awaited through spinning, without the GIL and without the ~200 µs
wake-up of a sleeping thread). While shards run, OpenBLAS is held to one thread.

Whether to shard is decided by measurement, per binding of the dims: the first
calls run sharded and the next ones whole, all timed (a second round of both if the
shards lose the first); the faster way is kept from then on, and a binding whose
whole call is under `SHARD_MIN_SECONDS` (bench/shard_threshold.py) always runs
whole. `AUTOGRAPH_THREADS=1` turns sharding off. Sharded and whole calls agree to
rounding.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from autograph.errors import InputError
from autograph.graph import Graph

from . import spin
from .jit import Scratch

log = logging.getLogger("autograph.compiler")

# A whole call at least this long is run as shards from then on (measured with
# bench/shard_threshold.py on this 2-core machine: whole and sharded tie at whole
# calls of 170–280 µs; below, the ~50 µs of hand-off, input slicing and gradient
# sums cost more than the second core gives).
SHARD_MIN_SECONDS = 250e-6
TRIAL_CALLS = 3          # whole calls timed before deciding (the first pays page faults)
SHARDED_TRIALS = 5       # sharded calls timed first (the first ones pay thread start-up),
SHARDED_TRIAL_SECONDS = 0.15   # and for at least this long: threads a multi-threaded BLAS
SHARDED_TRIALS_MAX = 64        # call left spinning (~0.1 s) slow the shards meanwhile
RECHECK_AFTER = 64       # calls after a verdict (one thread or shards) before the
                         # binding is raced again; twice as many after each race
FIRST_ROUNDS = 2         # rounds of trials the shards must lose before a first "one
                         # thread" verdict (the best call of every round counts)


class NotSeparable(Exception):
    """The graph's outputs cannot be rebuilt from shards of the batch (the message
    says which node and why)."""


# A value's state: (kind, batch axis or None, e) with the value ∝ B^-e.
ZERO = ("zero", None, 0)


def _free(e=0):
    return ("free", None, e)


def _batch(axis, e=0):
    return ("batch", axis, e)


def _sum(e=0):
    return ("sum", None, e)


def _why(n, message):
    return NotSeparable(f"{n.op} node {n.label!r}: {message}")


# ----------------------------------------------------------------------------- rules

LINEAR_UNARY = {"neg", "cast", "stop_gradient"}
NONLINEAR_UNARY = {"exp", "log", "tanh", "sigmoid", "sqrt", "abs", "sign", "relu",
                   "logical_not"}
NONLINEAR_BINARY = {"pow", "maximum", "minimum", "greater", "greater_equal", "less",
                    "less_equal", "equal", "not_equal", "logical_and", "logical_or"}


def _shift(s, in_ndim, out_ndim):
    """`s` seen through NumPy broadcasting from in_ndim to out_ndim dims."""
    return _batch(s[1] + out_ndim - in_ndim, s[2]) if s[0] == "batch" else s


def _same(n, states):
    """The state of a sum of values: kinds must agree (free rows may join batched
    ones), and so must their powers of B."""
    states = [s for s in states if s[0] != "zero"]
    if not states:
        return ZERO
    kinds = {s[0] for s in states}
    if "sum" in kinds and kinds != {"sum"}:
        raise _why(n, "adds a sum over the batch to a value that is not one")
    es = {s[2] for s in states}
    if len(es) > 1:
        raise _why(n, "adds values that scale with different powers of the batch size")
    if "sum" in kinds:
        return states[0]
    axes = {s[1] for s in states if s[0] == "batch"}
    if len(axes) > 1:
        raise _why(n, "combines values batched along different axes")
    return _batch(axes.pop(), es.pop()) if axes else states[0]


def _product(n, a, b, sign):
    """The state of a·b (sign +1) or a/b (sign -1)."""
    e = a[2] + sign * b[2]
    if b[0] == "sum" and sign < 0:
        raise _why(n, "divides by a sum over the batch")
    if "sum" in (a[0], b[0]):
        if a[0] == "sum" and b[0] == "sum" or "batch" in (a[0], b[0]):
            raise _why(n, "multiplies a sum over the batch by a batch-dependent value")
        return _sum(e)
    axes = {s[1] for s in (a, b) if s[0] == "batch"}
    if len(axes) > 1:
        raise _why(n, "combines values batched along different axes")
    return _batch(axes.pop(), e) if axes else _free(e)


def _nonlinear(n, states):
    """A nonlinear elementwise function: rows stay rows; sums and scaled values do
    not survive it."""
    states = [_free() if s[0] == "zero" else s for s in states]
    for s in states:
        if s[0] == "sum":
            raise _why(n, "is a nonlinear function of a sum over the batch")
        if s[2]:
            raise _why(n, "is a nonlinear function of a value scaled by the batch size")
    return _same(n, states)


def _elementwise(n, states):
    out = n.ndim
    ss = [_shift(s, x.ndim, out) for s, x in zip(states, n.inputs)]
    op = n.op
    if op in ("add", "sub"):
        return _same(n, ss)
    if op == "mul":
        return ZERO if ZERO in ss else _product(n, ss[0], ss[1], +1)
    if op == "div":
        if ss[0] == ZERO:
            return ZERO
        return _product(n, ss[0], _free() if ss[1] == ZERO else ss[1], -1)
    if op == "where":
        cond, a, b = ss
        branches = _same(n, [a, b])      # where(c, v, 0) scales with v
        if cond[0] == "sum" or cond[2]:
            raise _why(n, "selects by a batch-scaled or summed condition")
        if cond[0] == "batch":
            return _same(n, [branches, _batch(cond[1], branches[2])])
        return branches
    return _nonlinear(n, ss)


def _matmul(n, a, b):
    if ZERO in (a, b):
        return ZERO
    e = a[2] + b[2]
    if "sum" in (a[0], b[0]):
        if "batch" in (a[0], b[0]) or a[0] == b[0] == "sum":
            raise _why(n, "multiplies a sum over the batch by a batch-dependent matrix")
        return _sum(e)
    out = n.ndim

    def role(s, x, left):
        if s[0] != "batch":
            return None
        ax, nd = s[1], x.ndim
        if ax < nd - 2:
            return ("lead", ax + out - nd)
        if left:
            return ("row",) if ax == nd - 2 else ("k",)
        return ("k",) if ax == nd - 2 else ("col",)

    ra, rb = role(a, n.inputs[0], True), role(b, n.inputs[1], False)
    if ra is None and rb is None:
        return _free(e)
    if ra == rb == ("k",):
        return _sum(e)
    if ra is not None and ra[0] == "lead" and rb in (None, ra):
        return _batch(ra[1], e)
    if rb is not None and rb[0] == "lead" and ra is None:
        return _batch(rb[1], e)
    if ra == ("row",) and rb is None:
        return _batch(out - 2, e)
    if rb == ("col",) and ra is None:
        return _batch(out - 1, e)
    raise _why(n, "mixes batch rows in a way that is neither per row nor a sum")


def _signature(dims):
    """A shape prefix's size as (product of static sizes, sorted symbolic names)."""
    size = 1
    names = []
    for d in dims:
        if isinstance(d, int):
            size *= d
        else:
            names.append(d)
    return size, sorted(names)


def _full_slice(s):
    return (isinstance(s, slice) and s.start in (None, 0) and s.stop is None
            and s.step in (None, 1))


def _node_state(n, states, dim):
    """The state of node `n` from its inputs' states (raises NotSeparable)."""
    op, p = n.op, n.params
    if op in ("add", "sub", "mul", "div", "where") or op in NONLINEAR_BINARY:
        return _elementwise(n, states)
    if op in NONLINEAR_UNARY:
        return _nonlinear(n, states)
    if op in LINEAR_UNARY:
        return states[0]
    if op == "constant":
        return ZERO if not np.any(p["value"]) else _free()
    if op == "full":
        pos = [i for i, d in enumerate(p["shape"]) if d == dim]
        if len(pos) > 1:
            raise _why(n, f"has the batch dim {dim!r} twice")
        if p["value"] == 0:
            return ZERO
        return _batch(pos[0]) if pos else _free()
    if op == "shape_size":
        return _free(-list(p["dims"]).count(dim))
    if op == "matmul":
        return _matmul(n, *states)
    s = states[0] if states else None
    x = n.inputs[0] if n.inputs else None
    if op == "sum":
        if s[0] != "batch":
            return s
        if s[1] in p["axes"]:
            return _sum(s[2])
        return _batch(s[1] - (0 if p["keepdims"] else sum(a < s[1] for a in p["axes"])), s[2])
    if op == "max":
        if s[0] == "sum":
            raise _why(n, "takes the maximum of a sum over the batch")
        if s[0] != "batch":
            return s
        if s[1] in p["axes"]:
            raise _why(n, "takes a maximum across the batch")
        return _batch(s[1] - (0 if p["keepdims"] else sum(a < s[1] for a in p["axes"])), s[2])
    if op == "broadcast_to":
        shape = p["shape"]
        pos = [i for i, d in enumerate(shape) if d == dim]
        if s[0] == "batch":
            return _shift(s, x.ndim, len(shape))
        if pos and s[0] == "sum":
            raise _why(n, "spreads a sum over the batch back over the batch")
        if len(pos) > 1:
            raise _why(n, f"has the batch dim {dim!r} twice")
        if pos and s[0] == "free":
            return _batch(pos[0], s[2])
        return s
    if op in ("reshape", "bind_dims"):
        out = p["shape"]
        if s[0] != "batch":
            if dim in out and s != ZERO:
                raise _why(n, "reshapes a value into the batch dim")
            return s
        if list(x.shape).count(dim) != 1 or list(out).count(dim) != 1:
            raise _why(n, "reshapes across the batch dim")
        new = list(out).index(dim)
        if (s[1] != list(x.shape).index(dim)
                or _signature(x.shape[:s[1]]) != _signature(out[:new])):
            raise _why(n, "reshapes across the batch dim")
        return _batch(new, s[2])
    if op == "transpose":
        return _batch(list(p["perm"]).index(s[1]), s[2]) if s[0] == "batch" else s
    if op == "slice":
        if s[0] != "batch":
            return s
        index = p["index"]
        if not _full_slice(index[s[1]]):
            raise _why(n, "slices the batch dim")
        return _batch(s[1] - sum(isinstance(i, int) for i in index[:s[1]]), s[2])
    if op == "unslice":
        if s[0] != "batch":
            return s
        kept = [i for i, ix in enumerate(p["index"]) if not isinstance(ix, int)]
        out_axis = kept[s[1]]
        if not _full_slice(p["index"][out_axis]):
            raise _why(n, "writes into part of the batch dim")
        return _batch(out_axis, s[2])
    if op == "concat":
        res = _same(n, states)
        if res[0] == "batch" and res[1] == p["axis"] % n.ndim:
            raise _why(n, "concatenates along the batch dim")
        return res
    if op == "take":
        table, idx = states
        if table[0] in ("batch", "sum"):
            raise _why(n, "looks up rows of a batch-dependent table")
        if idx[0] == "batch":
            return _batch(idx[1], table[2])
        return table
    if op == "take_grad":
        ct, idx = states
        if idx[0] == "batch":
            if ct == ZERO:
                return ZERO
            if ct[0] != "batch" or ct[1] != idx[1]:
                raise _why(n, "scatters rows that are not the index's batch rows")
            return _sum(ct[2])
        if ct[0] == "batch":
            raise _why(n, "scatters batch rows by a batch-free index")
        return ct
    if op == "one_hot":
        return s
    raise _why(n, "has no sharding rule")


def _join(n, a, b):
    """A scan carry's state: its initial value's and its new value's must agree."""
    if a == ZERO:
        return b
    if b == ZERO or a == b:
        return a
    raise _why(n, f"carries a value whose batch state changes along the loop ({a} vs {b})")


def _scan(n, states, dim):
    p = n.params
    body: Graph = p["body"]
    nc, nx = p["n_carry"], p["n_xs"]
    if p["length"] == dim:
        raise _why(n, "loops over the batch dim")
    xs = []
    for s in states[nc:nc + nx]:
        if s[0] == "batch":
            if s[1] == 0:
                raise _why(n, "loops over the batch dim")
            s = _batch(s[1] - 1, s[2])
        xs.append(s)
    carry = list(states[:nc])
    for _ in range(4):
        outs = _states(body, carry + xs + list(states[nc + nx:]), dim)
        new = [_join(n, c, o) for c, o in zip(carry, outs[:nc])]
        if new == carry:
            break
        carry = new
    else:
        raise _why(n, "has carries whose batch state does not settle")

    def stacked(s):
        return _batch(s[1] + 1, s[2]) if s[0] == "batch" else s
    return carry + [stacked(y) for y in outs[nc:]] + [stacked(c) for c in carry]


def _states(graph: Graph, in_states, dim) -> list:
    env = {x: s for x, s in zip(graph.inputs, in_states)}
    for n in graph.nodes:
        if n in env:
            continue
        if n.op == "placeholder":
            raise _why(n, "is an input the graph was not given")
        ins = [env[x] for x in n.inputs]
        if n.op == "scan":
            env[n] = _scan(n, ins, dim)
        elif n.op == "item":
            env[n] = ins[0][n.params["index"]]
        else:
            env[n] = _node_state(n, ins, dim)
    return [env[o] for o in graph.outputs]


# ----------------------------------------------------------------------------- plans

@dataclass(frozen=True)
class ShardPlan:
    """How to split a graph's inputs along `dim` and rebuild its outputs."""

    dim: str
    in_axes: tuple            # per input: the batch axis, or None (shared by all shards)
    out_states: tuple         # per output: (kind, axis, e)
    out_axes: tuple           # per output: the axis to concatenate along, or None

    def describe(self) -> str:
        kinds = {"batch": "concatenated", "sum": "summed", "free": "shared", "zero": "shared"}
        lines = [f"sharded along {self.dim!r}"]
        for i, (s, ax) in enumerate(zip(self.out_states, self.out_axes)):
            how = "concatenated" if ax is not None else kinds[s[0]]
            scale = f", scaled by (B_i/B)^{s[2]}" if s[2] else ""
            lines.append(f"  output {i}: {how}{' on axis ' + str(ax) if ax is not None else ''}"
                         f"{scale}")
        return "\n".join(lines)


def analyze(graph: Graph, dim: str) -> ShardPlan:
    """The plan for sharding `graph` along the symbolic dim `dim`, or NotSeparable."""
    in_axes, states = [], []
    for x in graph.inputs:
        pos = [i for i, d in enumerate(x.shape) if d == dim]
        if len(pos) > 1:
            raise NotSeparable(f"input {x.name!r} has the batch dim {dim!r} twice")
        in_axes.append(pos[0] if pos else None)
        states.append(_batch(pos[0]) if pos else _free())
    if all(a is None for a in in_axes):
        raise NotSeparable(f"no input has the dim {dim!r}")
    outs = _states(graph, states, dim)
    out_axes = []
    for o, s in zip(graph.outputs, outs):
        if s[0] == "batch":
            out_axes.append(s[1])
        elif dim in o.shape:
            out_axes.append(list(o.shape).index(dim))    # a zero with the batch dim
        else:
            out_axes.append(None)
    return ShardPlan(dim, tuple(in_axes), tuple(outs), tuple(out_axes))


def find_plan(graph: Graph):
    """(plan, None) for the first symbolic input dim the graph separates along ("B"
    first), else (None, the reasons)."""
    dims = []
    for x in graph.inputs:
        for d in x.shape:
            if isinstance(d, str) and d not in dims:
                dims.append(d)
    dims.sort(key=lambda d: d != "B")
    reasons = []
    for d in dims:
        try:
            return analyze(graph, d), None
        except NotSeparable as e:
            reasons.append(f"{d}: {e}")
    return None, "; ".join(reasons) or "no symbolic input dims"


# ----------------------------------------------------------------------------- running

def thread_count() -> int:
    """Threads a call may use: $AUTOGRAPH_THREADS, else the CPUs this process may run on."""
    env = os.environ.get("AUTOGRAPH_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("AUTOGRAPH_THREADS=%r is not an integer; using 1", env)
            return 1
    return _cpus(os.getpid())


@functools.lru_cache(maxsize=4)
def _cpus(pid: int) -> int:
    """CPUs this process may run on (a system call: asked once per process)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def _on_workers(kernel, first, rest):
    """Run `first()` here while workers run the calls `rest()` lists, each as (native
    arguments, outputs, status word); every shard's outputs. None, having run
    nothing, when another thread's sharded call holds the workers."""
    if not spin.lock.acquire(blocking=False):
        return None
    try:
        calls = rest()
        posted = []
        for w, (raw, outs, status) in zip(spin.workers(len(calls)), calls):
            w.post(kernel.address, raw)
            posted.append((w, outs, status))
        return _finish(kernel, posted, first)
    finally:
        spin.lock.release()


def _finish(kernel, posted, first):
    """Run `first` here while the workers run their posted calls; wait for all of
    them (also when one fails) and return every shard's outputs, or raise the first
    error: an error of the calling thread's shard, else one a worker's status word
    reports (each status word is cleared)."""
    try:
        mine = first()
    finally:
        errors = []
        for w, _, status in posted:
            w.wait()
            if status[0]:
                try:
                    kernel._raise(status)
                except InputError as e:
                    errors.append(e)
    if errors:
        raise errors[0]
    return [mine] + [outs for _, outs, _ in posted]


def bounds(total: int, shards: int) -> list:
    """`shards` contiguous [lo, hi) ranges covering range(total), sizes differing by ≤ 1."""
    base, extra = divmod(total, shards)
    out, lo = [], 0
    for i in range(shards):
        hi = lo + base + (i < extra)
        out.append((lo, hi))
        lo = hi
    return out


def _take(a, axis, lo, hi):
    return a[(slice(None),) * axis + (slice(lo, hi),)]


def combine(plan: ShardPlan, parts, sizes, total, outs=None):
    """The whole call's outputs from the shards' (`parts[i]` from a shard of
    `sizes[i]` rows of `total`); written into `outs` when given."""
    result = []
    for k, (state, axis) in enumerate(zip(plan.out_states, plan.out_axes)):
        kind, _, e = state
        pieces = [part[k] for part in parts]
        if e:     # the shards' own arrays, overwritten by their next call: scale in place
            for p, b in zip(pieces, sizes):
                np.multiply(p, (b / total) ** e, out=p)
        dst = outs[k] if outs is not None else None
        if axis is not None:
            r = np.concatenate(pieces, axis=axis, out=dst)
        elif kind == "sum":
            r = np.add(pieces[0], pieces[1], out=dst if dst is not None else pieces[0])
            for p in pieces[2:]:
                np.add(r, p, out=r)
        elif dst is None:
            r = pieces[0]
        else:
            np.copyto(dst, pieces[0])
            r = dst
        result.append(r)
    return result


class _BlasThreads:
    """OpenBLAS's own thread count, set only when it changes: one per shard while
    shards run, its default otherwise."""

    def __init__(self):
        self.lib, self.default, self.current = None, None, None

    def set(self, n):
        if self.lib is None:
            from . import blas
            self.lib = blas.handle() or False
            if self.lib:
                self.default = self.current = int(self.lib.scipy_openblas_get_num_threads64_())
        if not self.lib:
            return
        n = self.default if n is None else n
        if n != self.current:
            self.lib.scipy_openblas_set_num_threads64_(ctypes.c_int(n))
            self.current = n


blas_threads = _BlasThreads()


class Sharder:
    """Runs a kernel whole or in shards, deciding per dim binding by timing."""

    def __init__(self, kernel, plan: ShardPlan):
        self.kernel, self.plan = kernel, plan
        self._trials: dict = {}      # dims key -> ((whole calls, best s), (sharded, best s))
        self._trial_start: dict = {}  # dims key -> when its first trial call started
        self._scratch: list = []     # per worker: arena and pointer arrays
        self._decided: dict = {}     # dims key -> shard count (1 = whole)
        self._recheck: dict = {}     # dims key -> whole calls left before racing again
        self._raced: dict = {}       # dims key -> races run again so far
        self._rounds: dict = {}      # dims key -> trial rounds of its first race so far

    def _key(self, dims):
        return tuple(dims.items())

    def shards_for(self, dims) -> int:
        """1 (run whole) or the shard count, once decided; None while timing."""
        key = self._key(dims)
        n = self._decided.get(key)
        if n is None:
            n = min(thread_count(), dims[self.plan.dim])
            mode = os.environ.get("AUTOGRAPH_SHARD", "auto")
            if n < 2 or mode == "never":
                n = self._decided[key] = 1
            elif mode == "always":
                self._decided[key] = n
            else:
                n = None
        return n

    def _record(self, dims, seconds, sharded=False):
        """Time one trial call. After SHARDED_TRIALS sharded calls and TRIAL_CALLS whole
        ones (in that order, see `_trial_sharded`) the faster way is kept — when the
        shards lose a binding's first race, after a second round (FIRST_ROUNDS) — and a
        binding whose whole call is under SHARD_MIN_SECONDS runs whole. (On a 2-core
        AVX2 machine the Elman step at the medium size in float32 ran 36.6 ms whole and
        55.5 ms in shards, while small LSTM and GRU steps ran 1.3–1.4x faster in
        shards: the whole-call time alone misleads.)"""
        key = self._key(dims)
        whole, shard = self._trials.get(key, ((0, float("inf")), (0, float("inf"))))
        if sharded:
            shard = (shard[0] + 1, min(shard[1], seconds))
        else:
            whole = (whole[0] + 1, min(whole[1], seconds))
        self._trials[key] = (whole, shard)
        if whole[0] < TRIAL_CALLS:
            return
        n = min(thread_count(), dims[self.plan.dim])
        fast = whole[1] >= SHARD_MIN_SECONDS and shard[1] < whole[1]
        rounds = self._rounds[key] = self._rounds.get(key, 0) + 1
        if not fast and whole[1] >= SHARD_MIN_SECONDS and rounds < FIRST_ROUNDS:
            # the first race, lost: another round, at once (a busy second core or another
            # library's spinning threads during one round's 0.15 s of shards made a small
            # LSTM step run whole at 15.6 ms, 11.2 in shards, for three benchmark runs)
            self._trials[key] = ((0, whole[1]), (0, shard[1]))
            self._trial_start.pop(key, None)
            log.info("%s: whole call %.0f us, %d shards %.0f us -> another round",
                     self.plan.dim, whole[1] * 1e6, n, shard[1] * 1e6)
            return
        self._decided[key] = n if fast else 1
        if whole[1] >= SHARD_MIN_SECONDS:
            # threads of another library's calls just before (a benchmark's references),
            # or another process on the second core, can make either way lose a race it
            # wins afterwards (an Elman step at D = 1024 ran in shards at 6.4 ms, 3.5–4.1
            # whole, when its whole calls were slowed during the race): race again
            # later, less and less often
            self._recheck[key] = RECHECK_AFTER << min(self._raced.get(key, 0), 16)
        log.info("%s: whole call %.0f us, %d shards %.0f us -> %s", self.plan.dim,
                 whole[1] * 1e6, n, shard[1] * 1e6, f"{n} shards" if fast else "one thread")

    def _trial_sharded(self, dims) -> bool:
        """While timing: is the next trial call a sharded one? The sharded ones come
        first: after a whole call, OpenBLAS's threads keep spinning for a while (~0.1
        s) and slow the shards' worker down (a small GRU step: 9 ms in shards alone,
        17–20 ms in shards alternating with whole calls); so do the threads of a
        BLAS call made before, NumPy's included: the shards are timed for at least
        SHARDED_TRIAL_SECONDS (an Elman step of 3.4 ms ran 7.5 ms for its first
        ~0.1 s of sharded calls). The first calls of either way pay page faults and
        thread start-ups, so the best of each is compared."""
        key = self._key(dims)
        _, shard = self._trials.get(key, ((0, 0.0), (0, 0.0)))
        start = self._trial_start.setdefault(key, time.perf_counter())
        return shard[0] < SHARDED_TRIALS or (
            shard[0] < SHARDED_TRIALS_MAX
            and time.perf_counter() - start < SHARDED_TRIAL_SECONDS)

    def run(self, arrays, dims, shards=None):
        """The kernel's outputs for `arrays`; `shards` forces a shard count."""
        if shards is None:
            if self.runs_whole(dims):
                blas_threads.set(None)        # the common case, decided: one thread
                return self.kernel.run(arrays, dims)
        n = shards if shards is not None else self.shards_for(dims)
        if n is None:             # still timing: sharded calls, then whole ones
            sharded = self._trial_sharded(dims)
            t0 = time.perf_counter()
            if sharded:
                outs = self._run_sharded(arrays, dims, min(thread_count(),
                                                           dims[self.plan.dim]))
            else:
                blas_threads.set(None)
                outs = self.kernel.run(arrays, dims)
            self._record(dims, time.perf_counter() - t0, sharded)
            return outs
        if shards is None:
            self._count(dims)
        if n <= 1:
            blas_threads.set(None)
            return self.kernel.run(arrays, dims)
        return self._run_sharded(arrays, dims, n)

    def runs_whole(self, dims) -> bool:
        """Decided: one thread for this binding, with no race to come (`run` then calls
        the kernel directly, as `Compiled.repeat` may)."""
        key = self._key(dims)
        return self._decided.get(key) == 1 and key not in self._recheck

    def _count(self, dims):
        """A call under a verdict (one thread or shards): after RECHECK_AFTER of them
        the binding is raced again (then after 2·RECHECK_AFTER, 4·, …)."""
        key = self._key(dims)
        left = self._recheck.get(key)
        if left is None:
            return
        if left > 1:
            self._recheck[key] = left - 1
            return
        del self._recheck[key]
        self._raced[key] = self._raced.get(key, 0) + 1
        for table in (self._decided, self._trials, self._trial_start):
            table.pop(key, None)

    def _shard_args(self, arrays, dims, n):
        total = dims[self.plan.dim]
        spans = bounds(total, n)
        args = []
        for lo, hi in spans:
            shard = [a if ax is None else np.ascontiguousarray(_take(a, ax, lo, hi))
                     for a, ax in zip(arrays, self.plan.in_axes)]
            args.append((shard, dict(dims, **{self.plan.dim: hi - lo})))
        return spans, args

    def _run_sharded(self, arrays, dims, n):
        spans, args = self._shard_args(arrays, dims, n)
        blas_threads.set(1)
        kernel = self.kernel

        def rest():
            return [kernel.prepare(a, d, sc)
                    for (a, d), sc in zip(args[1:], self._worker_scratch(n - 1))]
        parts = _on_workers(kernel, lambda: kernel.run(*args[0]), rest)
        if parts is None:               # another thread's sharded call has the workers
            parts = [kernel.run(*a) for a in args]
        return combine(self.plan, parts, [hi - lo for lo, hi in spans], dims[self.plan.dim])

    def _worker_scratch(self, n):
        """Per-worker arenas and pointer arrays for this kernel, kept between calls."""
        while len(self._scratch) < n:
            self._scratch.append(Scratch())
        return self._scratch[:n]

    def bind(self, arrays, dims):
        """Like `Kernel.bind`: a prepared call (whole or sharded, decided here by
        timing whole calls when the binding is new)."""
        n = self.shards_for(dims)
        if n is None:               # time the shards, then whole calls; keep the faster
            n = min(thread_count(), dims[self.plan.dim])
            sharded = self._bind_sharded(arrays, dims, n)
            call, outs = self.kernel.bind(arrays, dims)
            while self.shards_for(dims) is None:
                on_shards = self._trial_sharded(dims)
                if not on_shards:
                    blas_threads.set(None)
                t0 = time.perf_counter()
                (sharded[0] if on_shards else call)()
                self._record(dims, time.perf_counter() - t0, on_shards)
            n = self.shards_for(dims)
            if n > 1:
                return sharded
        if n == 1:
            call, outs = self.kernel.bind(arrays, dims)

            def whole():
                blas_threads.set(None)
                return call()
            whole.keep = call
            return whole, outs
        return self._bind_sharded(arrays, dims, n)

    def _bind_sharded(self, arrays, dims, n):
        plan, kernel = self.plan, self.kernel
        total = dims[plan.dim]
        spans = bounds(total, n)
        copies = []          # (source view, shard buffer) refreshed before each call
        calls = []
        shard_outs = []
        for lo, hi in spans:
            shard = []
            for a, ax in zip(arrays, plan.in_axes):
                if ax is None:
                    shard.append(a)
                elif ax == 0:
                    shard.append(a[lo:hi])          # a contiguous view: no copy
                else:
                    view = _take(a, ax, lo, hi)
                    buf = np.empty(view.shape, a.dtype)
                    copies.append((view, buf))
                    shard.append(buf)
            call, outs = kernel.bind(shard, dict(dims, **{plan.dim: hi - lo}))
            calls.append(call)
            shard_outs.append(outs)
        layout = kernel._layout(dims)
        final = [np.empty(shape, dtype) for shape, dtype in layout.outs]
        sizes = [hi - lo for lo, hi in spans]

        def sharded():
            for view, buf in copies:
                np.copyto(buf, view)
            blas_threads.set(1)
            if _on_workers(kernel, calls[0],
                           lambda: [(c.args, None, c.status) for c in calls[1:]]) is None:
                for c in calls:
                    c()
            combine(plan, shard_outs, sizes, total, final)
            return final
        sharded.keep = (calls, shard_outs, copies)
        return sharded, final
