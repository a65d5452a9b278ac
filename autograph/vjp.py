"""Symbolic reverse mode: `grad` and `vjp` add the backward graph to a graph.

`VJP` maps each op to its rule. A rule takes the node, the cotangent of its output
and one flag per input saying whether that input needs a cotangent; it returns
one cotangent per input (``None`` for zero). Rules build graph nodes with the same
functions users call, so a backward graph can be printed, checked, compiled and
differentiated again.
"""
from __future__ import annotations

from typing import Callable, Sequence

from . import api as ag
from .errors import DTypeError, GraphError
from .graph import FLOAT_DTYPES, Node, toposort

VJP: dict[str, Callable] = {}


def rule(*names):
    def deco(f):
        for n in names:
            VJP[n] = f
        return f
    return deco


def unbroadcast(ct: Node, shape) -> Node:
    """Sum `ct` over the axes that broadcasting added or stretched, back to `shape`."""
    shape = tuple(shape)
    if ct.shape == shape:
        return ct
    lead = ct.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and ct.shape[lead + i] != 1)
    return ag.reshape(ag.sum(ct, axes, keepdims=True), shape) if axes else ag.reshape(ct, shape)


def _swap_last(x: Node) -> Node:
    perm = tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2)
    return ag.transpose(x, perm)


# ----------------------------------------------------------------------------- rules

@rule("placeholder", "constant", "full", "shape_size", "stop_gradient", "sign", "greater",
      "greater_equal", "less", "less_equal", "equal", "not_equal", "logical_and",
      "logical_or", "logical_not", "one_hot")
def _no_gradient(node, ct, need):
    return (None,) * len(node.inputs)


@rule("neg")
def _neg(node, ct, need):
    return (-ct,)


@rule("exp")
def _exp(node, ct, need):
    return (ct * node,)


@rule("log")
def _log(node, ct, need):
    return (ct / node.inputs[0],)


@rule("tanh")
def _tanh(node, ct, need):
    return (ct * (1 - node * node),)


@rule("sigmoid")
def _sigmoid(node, ct, need):
    return (ct * (node * (1 - node)),)


@rule("sqrt")
def _sqrt(node, ct, need):
    return (ct * 0.5 / node,)


@rule("abs")
def _abs(node, ct, need):
    return (ct * ag.sign(node.inputs[0]),)


@rule("relu")
def _relu(node, ct, need):
    return (ag.where(node.inputs[0] > 0, ct, 0),)


@rule("add")
def _add(node, ct, need):
    a, b = node.inputs
    return unbroadcast(ct, a.shape), unbroadcast(ct, b.shape)


@rule("sub")
def _sub(node, ct, need):
    a, b = node.inputs
    return unbroadcast(ct, a.shape), (unbroadcast(-ct, b.shape) if need[1] else None)


@rule("mul")
def _mul(node, ct, need):
    a, b = node.inputs
    return (unbroadcast(ct * b, a.shape) if need[0] else None,
            unbroadcast(ct * a, b.shape) if need[1] else None)


@rule("div")
def _div(node, ct, need):
    a, b = node.inputs
    return (unbroadcast(ct / b, a.shape) if need[0] else None,
            unbroadcast(-ct * node / b, b.shape) if need[1] else None)


@rule("pow")
def _pow(node, ct, need):
    a, b = node.inputs
    return (unbroadcast(ct * b * a ** (b - 1), a.shape) if need[0] else None,
            unbroadcast(ct * ag.log(a) * node, b.shape) if need[1] else None)


@rule("maximum", "minimum")
def _max_min(node, ct, need):
    # Ties send the whole gradient to the first operand (so clip(x, lo, hi) passes it on).
    a, b = node.inputs
    first = a >= b if node.op == "maximum" else a <= b
    return (unbroadcast(ag.where(first, ct, 0), a.shape) if need[0] else None,
            unbroadcast(ag.where(first, 0, ct), b.shape) if need[1] else None)


@rule("where")
def _where(node, ct, need):
    mask, a, b = node.inputs
    return (None,
            unbroadcast(ag.where(mask, ct, 0), a.shape) if need[1] else None,
            unbroadcast(ag.where(mask, 0, ct), b.shape) if need[2] else None)


@rule("cast")
def _cast(node, ct, need):
    x = node.inputs[0]
    return (ag.cast(ct, x.dtype) if x.dtype in FLOAT_DTYPES else None,)


@rule("matmul")
def _matmul(node, ct, need):
    a, b = node.inputs
    return (unbroadcast(ag.matmul(ct, _swap_last(b)), a.shape) if need[0] else None,
            unbroadcast(ag.matmul(_swap_last(a), ct), b.shape) if need[1] else None)


def _keep_shape(node):
    x = node.inputs[0]
    axes = node.params["axes"]
    return tuple(1 if i in axes else d for i, d in enumerate(x.shape))


@rule("sum")
def _sum(node, ct, need):
    x = node.inputs[0]
    return (ag.broadcast_to(ag.reshape(ct, _keep_shape(node)), x.shape),)


@rule("max")
def _max(node, ct, need):
    # The gradient is shared equally between tied maxima, as JAX does.
    x = node.inputs[0]
    keep = _keep_shape(node)
    hit = ag.cast(ag.equal(x, ag.reshape(node, keep)), x.dtype)
    count = ag.sum(hit, node.params["axes"], keepdims=True)
    return (hit * (ag.reshape(ct, keep) / count),)


@rule("broadcast_to")
def _broadcast_to(node, ct, need):
    return (unbroadcast(ct, node.inputs[0].shape),)


@rule("reshape")
def _reshape(node, ct, need):
    return (ag.reshape(ct, node.inputs[0].shape),)


@rule("bind_dims")
def _bind_dims(node, ct, need):
    return (ag.bind_dims(ct, node.inputs[0].shape),)


@rule("transpose")
def _transpose(node, ct, need):
    perm = node.params["perm"]
    inverse = tuple(sorted(range(len(perm)), key=perm.__getitem__))
    return (ag.transpose(ct, inverse),)


@rule("slice")
def _slice(node, ct, need):
    from .ops import make
    return (make("unslice", (ct,), node.params),)


@rule("unslice")
def _unslice(node, ct, need):
    from .ops import make
    return (make("slice", (ct,), node.params),)


@rule("concat")
def _concat(node, ct, need):
    axis = node.params["axis"]
    out, start = [], 0
    for x, needed in zip(node.inputs, need):
        stop = start + x.shape[axis]
        index = (slice(None),) * axis + (slice(start, stop),)
        out.append(ct[index] if needed else None)
        start = stop
    return tuple(out)


@rule("take")
def _take(node, ct, need):
    from .ops import make
    table, idx = node.inputs
    return make("take_grad", (ct, idx), {"rows": table.shape[0]}), None


@rule("take_grad")
def _take_grad(node, ct, need):
    return ag.take(ct, node.inputs[1]), None


# "item" and "scan" are handled by the engine and by autograph.scan respectively; the
# engine sends an item's cotangent into its tuple's list of output cotangents.
VJP["item"] = None


# ----------------------------------------------------------------------------- engine

class StepRecorder:
    """Collects, while a backward graph is built, each scan's per-step parameter
    cotangents (stacked along time) keyed by the outer parameter node."""

    active: list["StepRecorder"] = []

    def __init__(self):
        self.steps: dict[Node, list[Node]] = {}

    def add(self, param: Node, stacked: Node):
        self.steps.setdefault(param, []).append(stacked)


def _check_wrt(wrt):
    for w in wrt:
        if not isinstance(w, Node):
            raise GraphError(f"grad: wrt must hold graph values, got {type(w).__name__}")
        if w.dtype not in FLOAT_DTYPES:
            raise DTypeError(f"grad: cannot differentiate with respect to {w.label!r} of dtype "
                             f"{w.dtype}; only float values have gradients")


def vjp(outputs: Sequence[Node], cotangents: Sequence[Node], wrt: Sequence[Node],
        prefix: str = "d") -> list[Node | None]:
    """Cotangents of `wrt` given those of `outputs` (``None`` where no path connects).

    Each cotangent of a named node is itself named ``{prefix}{name}``, so a backward
    graph reads like the chain rule (``dL/ds_3``).
    """
    outputs, cotangents, wrt = list(outputs), list(cotangents), list(wrt)
    _check_wrt(wrt)
    order = toposort(outputs)
    # Forward sweep: which nodes depend on some wrt through differentiable edges.
    wrt_ids = set(map(id, wrt))
    live: set[int] = set()
    for n in order:
        if id(n) in wrt_ids:
            live.add(id(n))
        elif n.op != "stop_gradient" and n.dtype in FLOAT_DTYPES + ("tuple",) and any(
                id(i) in live for i in n.inputs):
            live.add(id(n))

    pending: dict[int, list[Node]] = {}
    tuple_cts: dict[int, list] = {}
    for y, c in zip(outputs, cotangents):
        if id(y) in live and c is not None:
            pending.setdefault(id(y), []).append(c)

    def total(n: Node) -> Node | None:
        parts = pending.pop(id(n), None)
        if not parts:
            return None
        acc = parts[0]
        for p in parts[1:]:
            acc = acc + p
        # A placeholder (a scan body's incoming cotangent) keeps its own name.
        if n.name and acc.name != f"{prefix}{n.name}" and acc.op != "placeholder":
            acc = ag.named(acc, f"{prefix}{n.name}")
        return acc

    results: dict[int, Node | None] = {}
    for n in reversed(order):
        if id(n) not in live:
            continue
        if n.dtype == "tuple":
            cts = tuple_cts.pop(id(n), None)
            if cts is None:
                continue
            in_cts = VJP_TUPLE[n.op](n, cts, tuple(id(i) in live for i in n.inputs))
        else:
            ct = total(n)
            if id(n) in wrt_ids:
                results[id(n)] = ct
            if ct is None or not n.inputs:
                continue
            if n.op == "item":
                (tup,) = n.inputs
                slot = tuple_cts.setdefault(id(tup), [None] * len(tup.params["out_types"]))
                i = n.params["index"]
                slot[i] = ct if slot[i] is None else slot[i] + ct
                continue
            in_cts = VJP[n.op](n, ct, tuple(id(i) in live for i in n.inputs))
        for x, c in zip(n.inputs, in_cts):
            if c is not None and id(x) in live:
                if c.shape != x.shape or c.dtype != x.dtype:
                    raise GraphError(f"internal: the {n.op} rule gave a cotangent of type "
                                     f"{c.type_str} for {x.label!r} of type {x.type_str}")
                pending.setdefault(id(x), []).append(c)
    return [results.get(id(w)) for w in wrt]


VJP_TUPLE: dict[str, Callable] = {}


def grad(y: Node, wrt, name: str | None = None) -> list[Node]:
    """Symbolic gradients ∂y/∂w of the scalar `y`, one new graph value per `wrt`.

    A `wrt` that `y` does not depend on gets zeros. `wrt` may be one value (then one
    value is returned) or a list.
    """
    single = isinstance(wrt, Node)
    wrt = [wrt] if single else list(wrt)
    y = ag.as_node(y)
    if y.shape != ():
        raise GraphError(f"grad: {y.label!r} has shape {list(y.shape)}; grad needs a scalar. "
                         "Sum or average it first, or use vjp() with a cotangent")
    if y.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"grad: {y.label!r} has dtype {y.dtype}; grad needs a float scalar")
    seed = ag.ones((), y.dtype)
    cts = vjp([y], [seed], wrt, prefix=f"d{y.name or 'y'}/d")
    out = []
    for w, c in zip(wrt, cts):
        if c is None:
            c = ag.zeros(w.shape, w.dtype)
        if w.name and c.name != f"d{y.name or 'y'}/d{w.name}":
            c = ag.named(c, f"d{y.name or 'y'}/d{w.name}")
        out.append(c)
    return out[0] if single else out


def grad_steps(y: Node, wrt) -> list[Node | None]:
    """For each parameter a scan closes over, its per-step gradient contributions.

    Returns, per `wrt`, a value of shape ``[T, *w.shape]`` whose slice ``k`` is
    ∂y/∂W^(k): the gradient through the copy of W used at step k (BPTT's "sum over
    copies of the weights"). Summed over axis 0 it is the scan's share of ∂y/∂W.

    The scan may close over W itself or over values computed from it outside the
    loop (``W.T``, ``b + b_hh``, as the `rnn` cells do): each step's cotangent of such
    a value is carried back to W through that computation, step by step.
    ``None`` if `w` does not reach `y` through exactly one scan.
    """
    single = isinstance(wrt, Node)
    wrt = [wrt] if single else list(wrt)
    recorder = StepRecorder()
    StepRecorder.active.append(recorder)
    try:
        grad(y, wrt)
    finally:
        StepRecorder.active.pop()
    out = []
    for w in wrt:
        direct = recorder.steps.get(w, [])
        derived = [(c, stacked) for c, found in recorder.steps.items() if c is not w
                   and any(n is w for n in toposort([c])) for stacked in found]
        if len(direct) + len(derived) == 0 or len(direct) > 1:
            out.append(None)
            continue
        total = direct[0] if direct else None
        for c, stacked in derived:
            mapped = _steps_through(c, stacked, w)
            total = mapped if total is None else total + mapped
        out.append(total)
    return out[0] if single else out


def _steps_through(c: Node, stacked: Node, w: Node) -> Node:
    """[T, *w.shape]: slice k is the cotangent of `w` given slice k of `stacked` as the
    cotangent of `c` (a value computed from `w`), by a scan over the steps."""
    def body(carry, ct_k):
        (g,) = vjp([c], [ct_k], [w])
        return carry, ag.zeros(w.shape, w.dtype) if g is None else g
    from .scan import scan    # scan's own VJP lives in this module: import at call time
    _, per_step = scan(body, ag.zeros((), w.dtype), stacked)
    return per_step
