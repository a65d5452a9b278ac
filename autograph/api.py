"""The tracing API: numpy-like functions that build graph nodes.

Derived functions reuse primitives (``mean`` is a sum times a size, ``softmax`` is
built from ``max``, ``exp`` and ``sum``), which keeps the set of ops that every
backend must implement small. Python scalars are *weakly typed*: ``x * 2`` takes
the dtype of ``x``.
"""
from __future__ import annotations

import builtins
import numbers
import re
from typing import Sequence

import numpy as np

from .errors import DTypeError, GraphError, ShapeError
from .graph import DTYPES, FLOAT_DTYPES, Node
from .ops import describe, fail, make, norm_axes

_DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ----------------------------------------------------------------------------- sources

def as_dtype(dtype) -> str:
    """Our name for a dtype given as a string, a NumPy dtype or a NumPy type."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError:
        raise DTypeError(f"{dtype!r} is not a dtype; use one of {', '.join(DTYPES)}") from None
    if name not in DTYPES:
        raise DTypeError(f"dtype {name} is not supported; use one of {', '.join(DTYPES)}")
    return name


def _check_shape(shape, what) -> tuple:
    if isinstance(shape, (int, str)):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise ShapeError(f"{what}: shape must be a tuple of ints and dim names, got {shape!r}")
    out = []
    for d in shape:
        if isinstance(d, (bool, np.bool_)):
            raise ShapeError(f"{what}: shape entry {d!r} is not an int or a dim name")
        if isinstance(d, (int, np.integer)):
            if d < 0:
                raise ShapeError(f"{what}: negative dim {d} in shape {shape}")
            out.append(int(d))
        elif isinstance(d, str) and _DIM_NAME.match(d):
            out.append(d)
        else:
            raise ShapeError(f"{what}: shape entry {d!r} is neither an int nor a dim name "
                             "such as 'T' or 'B'")
    return tuple(out)


def placeholder(name: str, shape, dtype="float64") -> Node:
    """A graph input: `shape` holds ints and/or symbolic dim names, e.g. ``("T", "B", 16)``."""
    if not isinstance(name, str) or not name:
        raise GraphError(f"a placeholder needs a non-empty string name, got {name!r}")
    shape = _check_shape(shape, f"placeholder {name!r}")
    return Node("placeholder", (), {"shape": shape, "dtype": as_dtype(dtype)}, shape,
                as_dtype(dtype), name)


def constant(value, dtype=None, name=None) -> Node:
    """A constant array in the graph (copied and made read-only)."""
    if isinstance(value, Node):
        raise GraphError("constant() takes an array, not a graph value")
    arr = np.array(value, dtype=None if dtype is None else as_dtype(dtype))
    if dtype is None:
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float64 if arr.dtype.itemsize > 4 or arr.ndim == 0 else arr.dtype)
        elif arr.dtype.kind in "iu":
            arr = arr.astype(np.int64)
        elif arr.dtype.kind != "b":
            raise DTypeError(f"constant of dtype {arr.dtype} is not supported; "
                             f"use one of {', '.join(DTYPES)}")
    arr.setflags(write=False)
    return make("constant", (), {"value": arr}, name)


def as_node(x, like: Node | None = None) -> Node:
    """`x` as a node; a Python scalar takes the dtype of `like` (weak typing)."""
    if isinstance(x, Node):
        if x.dtype == "tuple":
            raise GraphError(f"{x.label!r} has several outputs; pick one with item()")
        return x
    if like is not None and isinstance(x, (numbers.Number, np.bool_)) and not isinstance(x, np.ndarray):
        if like.dtype in ("int64", "bool") and isinstance(x, float) and not float(x).is_integer():
            raise DTypeError(f"cannot combine {describe(like)} with the float {x}; "
                             "cast the value with .astype('float64')")
        if like.dtype == "bool" and not isinstance(x, (bool, np.bool_)):
            raise DTypeError(f"cannot combine the mask {describe(like)} with the number {x}; "
                             "cast the mask with .astype(...)")
        return constant(x, dtype=like.dtype)
    if isinstance(x, (numbers.Number, np.ndarray, np.generic, list, tuple)):
        return constant(x)
    raise GraphError(f"cannot use a {type(x).__name__} as a graph value")


def full(shape, value, dtype="float64", name=None) -> Node:
    """An array of one value; `shape` may name symbolic dims."""
    return make("full", (), {"shape": _check_shape(shape, "full"), "value": value,
                             "dtype": as_dtype(dtype)}, name)


def zeros(shape, dtype="float64", name=None) -> Node:
    """Zeros of `shape` (symbolic dims allowed)."""
    return full(shape, 0, dtype, name)


def ones(shape, dtype="float64", name=None) -> Node:
    """Ones of `shape` (symbolic dims allowed)."""
    return full(shape, 1, dtype, name)


def zeros_like(x: Node) -> Node:
    return full(x.shape, 0, x.dtype)


def ones_like(x: Node) -> Node:
    return full(x.shape, 1, x.dtype)


def shape_size(dims: Sequence, dtype="float64") -> Node:
    """The product of `dims` as a scalar, known at run time for symbolic dims."""
    dims = _check_shape(dims, "shape_size")
    if all(isinstance(d, int) for d in dims):
        return constant(int(np.prod(dims, dtype=np.int64)), dtype=dtype)
    return make("shape_size", (), {"dims": dims, "dtype": as_dtype(dtype)})


def named(x: Node, name: str) -> Node:
    """The same value under a readable name (``s``, ``h_t``, ``loss``)."""
    x = as_node(x)
    if not isinstance(name, str) or not name:
        raise GraphError(f"a name must be a non-empty string, got {name!r}")
    if x.op == "placeholder":
        raise GraphError(f"placeholder {x.name!r} already has its name; "
                         "name placeholders when you create them")
    return Node(x.op, x.inputs, x.params, x.shape, x.dtype, name)


# ----------------------------------------------------------------------------- elementwise

def _unary(op):
    def f(x, name=None):
        return make(op, (as_node(x),), None, name)
    f.__name__ = op
    f.__doc__ = f"Elementwise {op}."
    return f


exp = _unary("exp")
log = _unary("log")
tanh = _unary("tanh")
sigmoid = _unary("sigmoid")
relu = _unary("relu")
sqrt = _unary("sqrt")
sign = _unary("sign")
negative = _unary("neg")
abs = _unary("abs")  # noqa: A001 - numpy's name
logical_not = _unary("logical_not")


def _pair(a, b):
    if isinstance(a, Node):
        return a, as_node(b, like=a)
    if isinstance(b, Node):
        return as_node(a, like=b), b
    raise GraphError("at least one operand must be a graph value")


def _binary(op):
    def f(a, b, name=None):
        a, b = _pair(a, b)
        return make(op, (a, b), None, name)
    f.__name__ = op
    f.__doc__ = f"Elementwise {op}, with NumPy broadcasting."
    return f


add = _binary("add")
subtract = _binary("sub")
multiply = _binary("mul")
divide = _binary("div")
power = _binary("pow")
maximum = _binary("maximum")
minimum = _binary("minimum")
greater = _binary("greater")
greater_equal = _binary("greater_equal")
less = _binary("less")
less_equal = _binary("less_equal")
equal = _binary("equal")
not_equal = _binary("not_equal")
logical_and = _binary("logical_and")
logical_or = _binary("logical_or")


def square(x, name=None) -> Node:
    """x * x."""
    x = as_node(x)
    return make("mul", (x, x), None, name)


def where(mask, a, b, name=None) -> Node:
    """`a` where `mask` is true, else `b` (NumPy broadcasting of all three)."""
    mask = as_node(mask)
    a, b = _pair(a, b)
    return make("where", (mask, a, b), None, name)


def clip(x, lo, hi, name=None) -> Node:
    """`x` limited to [lo, hi]; the gradient is 1 inside and 0 outside."""
    x = as_node(x)
    return minimum(maximum(x, lo), hi, name=name)


def cast(x, dtype, name=None) -> Node:
    """`x` converted to `dtype`."""
    x = as_node(x)
    dtype = as_dtype(dtype)
    if dtype == x.dtype and name is None:
        return x
    return make("cast", (x,), {"dtype": dtype}, name)


def stop_gradient(x, name=None) -> Node:
    """`x`, treated as a constant by `grad`."""
    return make("stop_gradient", (as_node(x),), None, name)


# ----------------------------------------------------------------------------- matmul

def matmul(a, b, name=None) -> Node:
    """NumPy's matmul: vectors, matrices and batches of matrices."""
    a, b = _pair(a, b)
    if a.ndim == 0 or b.ndim == 0:
        fail("matmul", (a, b), "operands must have at least one dim; use * for scalars")
    if a.ndim == 1 and b.ndim == 1:
        if a.shape != b.shape:
            fail("matmul", (a, b), "vectors of different lengths")
        return sum(a * b, name=name)
    # Check vector operands here, before they are reshaped, so the message names them.
    inner_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if a.shape[-1] != inner_b:
        fail("matmul", (a, b), f"inner dims differ: {a.shape[-1]} (last of {a.label!r}) vs "
                               f"{inner_b} ({'length' if b.ndim == 1 else 'second-to-last'} "
                               f"of {b.label!r})")
    if a.ndim == 1:
        out = make("matmul", (reshape(a, (1,) + a.shape), b))
        return named_if(reshape(out, out.shape[:-2] + out.shape[-1:]), name)
    if b.ndim == 1:
        out = make("matmul", (a, reshape(b, b.shape + (1,))))
        return named_if(reshape(out, out.shape[:-1]), name)
    return make("matmul", (a, b), None, name)


def named_if(x: Node, name):
    return x if name is None else named(x, name)


# ----------------------------------------------------------------------------- reductions

def sum(x, axis=None, keepdims=False, name=None) -> Node:  # noqa: A001 - numpy's name
    """Sum over `axis` (None: all axes)."""
    x = as_node(x)
    axes = norm_axes("sum", x, axis)
    if x.dtype == "bool":
        x = cast(x, "int64")
    return make("sum", (x,), {"axes": axes, "keepdims": bool(keepdims)}, name)


def mean(x, axis=None, keepdims=False, name=None) -> Node:
    """Mean over `axis`; a symbolic dim's size is read when the graph runs."""
    x = as_node(x)
    if x.dtype not in FLOAT_DTYPES:
        fail("mean", (x,), "needs a float operand; cast it first", DTypeError)
    axes = norm_axes("mean", x, axis)
    total = sum(x, axes, keepdims)
    return divide(total, shape_size([x.shape[a] for a in axes], x.dtype), name=name)


def max(x, axis=None, keepdims=False, name=None) -> Node:  # noqa: A001 - numpy's name
    """Maximum over `axis`; ties share the gradient equally."""
    x = as_node(x)
    return make("max", (x,), {"axes": norm_axes("max", x, axis), "keepdims": bool(keepdims)},
                name)


def min(x, axis=None, keepdims=False, name=None) -> Node:  # noqa: A001 - numpy's name
    """Minimum over `axis`."""
    return negative(max(negative(x), axis, keepdims), name=name)


def logsumexp(x, axis=-1, keepdims=False, name=None) -> Node:
    """log Σ exp(x) over `axis`, shifted by the max so that it never overflows."""
    x = as_node(x)
    m = stop_gradient(max(x, axis, keepdims=True))
    out = log(sum(exp(x - m), axis, keepdims=True)) + m
    if not keepdims:
        axes = norm_axes("logsumexp", x, axis)
        out = reshape(out, tuple(d for i, d in enumerate(x.shape) if i not in axes))
    return named_if(out, name)


def log_softmax(x, axis=-1, name=None) -> Node:
    """x − logsumexp(x): log-probabilities, stable for large logits."""
    x = as_node(x)
    z = x - stop_gradient(max(x, axis, keepdims=True))
    return subtract(z, log(sum(exp(z), axis, keepdims=True)), name=name)


def softmax(x, axis=-1, name=None) -> Node:
    """exp(x) / Σ exp(x) over `axis`, computed after subtracting the max."""
    x = as_node(x)
    e = exp(x - stop_gradient(max(x, axis, keepdims=True)))
    return divide(e, sum(e, axis, keepdims=True), name=name)


def cross_entropy(logits, targets, reduction="mean", name=None) -> Node:
    """Softmax cross-entropy −log softmax(logits)[target] over the last axis.

    `targets` are int64 class indices with the shape of `logits` without its last
    axis. `reduction` is ``"mean"`` (over all targets, as PyTorch), ``"sum"``
    (the textbook's L = Σ_t −log y_{t,c}) or ``"none"`` (one loss per target).
    """
    logits, targets = as_node(logits), as_node(targets)
    if logits.ndim < 1:
        fail("cross_entropy", (logits, targets), "logits need a class axis")
    if targets.dtype != "int64":
        fail("cross_entropy", (logits, targets),
             f"targets must be int64 class indices, got {targets.dtype}", DTypeError)
    if targets.shape != logits.shape[:-1]:
        fail("cross_entropy", (logits, targets),
             f"targets must have shape {list(logits.shape[:-1])} (the logits without their "
             f"class axis), got {list(targets.shape)}")
    if reduction not in ("mean", "sum", "none"):
        raise GraphError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', "
                         f"got {reduction!r}")
    picked = one_hot(targets, logits.shape[-1], logits.dtype) * log_softmax(logits)
    losses = negative(sum(picked, -1))
    if reduction == "none":
        return named_if(losses, name)
    return (mean if reduction == "mean" else sum)(losses, name=name)


# ----------------------------------------------------------------------------- shape ops

def reshape(x, shape, name=None) -> Node:
    """Same elements in a new shape; one static entry may be -1. Symbolic dims stay."""
    x = as_node(x)
    shape = list(shape) if not isinstance(shape, (int, str)) else [shape]
    if shape.count(-1) > 1:
        fail("reshape", (x,), "at most one dim may be -1")
    if -1 in shape:
        known = int(np.prod([d for d in shape if isinstance(d, int) and d != -1]))
        have = int(np.prod([d for d in x.shape if isinstance(d, int)]))
        if known == 0 or have % known:
            fail("reshape", (x,), f"cannot infer -1 in {tuple(shape)}")
        shape[shape.index(-1)] = have // known
    shape = _check_shape(shape, "reshape")
    if shape == x.shape and name is None:
        return x
    return make("reshape", (x,), {"shape": shape}, name)


def transpose(x, axes=None, name=None) -> Node:
    """Axes permuted (reversed when `axes` is None)."""
    x = as_node(x)
    if axes is None:
        perm = tuple(reversed(range(x.ndim)))
    else:
        perm = tuple(int(a) % x.ndim if x.ndim and -x.ndim <= int(a) < x.ndim else int(a)
                     for a in axes)
    if perm == tuple(range(x.ndim)) and name is None:
        return x
    return make("transpose", (x,), {"perm": perm}, name)


def broadcast_to(x, shape, name=None) -> Node:
    """`x` repeated to `shape` by NumPy's broadcasting rules."""
    x = as_node(x)
    shape = _check_shape(shape, "broadcast_to")
    if shape == x.shape and name is None:
        return x
    return make("broadcast_to", (x,), {"shape": shape}, name)


def bind_dims(x, shape, name=None) -> Node:
    """`x` viewed with static dims standing for symbolic ones (or the reverse); when
    the graph runs, the bound symbolic dims must equal the static sizes."""
    x = as_node(x)
    shape = _check_shape(shape, "bind_dims")
    if shape == x.shape and name is None:
        return x
    return make("bind_dims", (x,), {"shape": shape, "in_shape": x.shape}, name)


def expand_dims(x, axis, name=None) -> Node:
    """A new axis of size 1 at `axis`."""
    x = as_node(x)
    axis = axis if axis >= 0 else x.ndim + 1 + axis
    return reshape(x, x.shape[:axis] + (1,) + x.shape[axis:], name)


def squeeze(x, axis, name=None) -> Node:
    """`x` without the size-1 axis `axis`."""
    x = as_node(x)
    (axis,) = norm_axes("squeeze", x, axis)
    if x.shape[axis] != 1:
        fail("squeeze", (x,), f"axis {axis} has size {x.shape[axis]}, not 1")
    return reshape(x, x.shape[:axis] + x.shape[axis + 1:], name)


def concat(xs: Sequence, axis=0, name=None) -> Node:
    """Join values along an existing (static) axis."""
    xs = [as_node(x) for x in xs]
    if not xs:
        raise GraphError("concat needs at least one value")
    (axis,) = norm_axes("concat", xs[0], axis)
    if len(xs) == 1:
        return named_if(xs[0], name)
    return make("concat", xs, {"axis": axis}, name)


def stack(xs: Sequence, axis=0, name=None) -> Node:
    """Join values along a new axis."""
    xs = [as_node(x) for x in xs]
    if not xs:
        raise GraphError("stack needs at least one value")
    for x in xs[1:]:
        if x.shape != xs[0].shape:
            fail("stack", xs, "all values must have the same shape")
    axis = axis if axis >= 0 else xs[0].ndim + 1 + axis
    return concat([expand_dims(x, axis) for x in xs], axis, name)


def take(table, indices, name=None) -> Node:
    """Rows `table[indices]` (an embedding lookup); `indices` are int64."""
    table = as_node(table)
    indices = as_node(indices)
    return make("take", (table, indices), None, name)


def one_hot(indices, depth: int, dtype="float64", name=None) -> Node:
    """int64 `indices` as one-hot vectors of length `depth` along a new last axis."""
    indices = as_node(indices)
    if not isinstance(depth, (int, np.integer)) or depth < 1:
        raise GraphError(f"one_hot: depth must be a positive int, got {depth!r}")
    return make("one_hot", (indices,), {"depth": int(depth), "dtype": as_dtype(dtype)}, name)


def getitem(x: Node, key) -> Node:
    """NumPy basic indexing (ints, slices, ``...``, ``None``); an int64 value takes rows."""
    if isinstance(key, Node):
        return take(x, key)
    if not isinstance(key, tuple):
        key = (key,)
    for k in key:
        if isinstance(k, Node) or isinstance(k, (list, np.ndarray)):
            raise GraphError(f"indexing {x.label!r} with an array is not supported; "
                             "use take(table, indices) for rows, or where(mask, a, b) for masks")
        if not (k is None or k is Ellipsis or isinstance(k, (slice, int, np.integer))):
            raise GraphError(f"cannot index {x.label!r} with {k!r}")
    if builtins.sum(k is Ellipsis for k in key) > 1:
        raise GraphError("an index can only have a single ellipsis ('...')")
    used = builtins.sum(1 for k in key if k is not None and k is not Ellipsis)
    if used > x.ndim:
        fail("slice", (x,), f"too many indices ({used}) for {x.ndim} dims")
    if Ellipsis in key:
        i = key.index(Ellipsis)
        key = key[:i] + (slice(None),) * (x.ndim - used) + key[i + 1:]
    else:
        key = key + (slice(None),) * (x.ndim - used)
    index = []
    out_shape_with_new = []  # None marks a new axis, an int an original output axis
    for k in key:
        if k is None:
            out_shape_with_new.append(None)
        elif isinstance(k, slice):
            index.append(slice(*(None if v is None else int(v) for v in (k.start, k.stop, k.step))))
            out_shape_with_new.append(len(index) - 1)
        else:
            index.append(int(k))
    index = tuple(index)
    if all(isinstance(k, slice) and k == slice(None) for k in index):
        y = x
    else:
        y = make("slice", (x,), {"index": index, "in_shape": x.shape})
    if None in out_shape_with_new:
        dims = iter(y.shape)
        y = reshape(y, tuple(1 if k is None else next(dims) for k in out_shape_with_new))
    return y


def item(x: Node, index: int) -> Node:
    """Output `index` of a multi-output node (a scan)."""
    return make("item", (x,), {"index": index})


# ----------------------------------------------------------------------------- operators

def _install_operators():
    def swap(f):
        return lambda self, other: f(other, self)

    ops = {
        "__add__": add, "__radd__": swap(add),
        "__sub__": subtract, "__rsub__": swap(subtract),
        "__mul__": multiply, "__rmul__": swap(multiply),
        "__truediv__": divide, "__rtruediv__": swap(divide),
        "__pow__": power, "__rpow__": swap(power),
        "__matmul__": matmul, "__rmatmul__": swap(matmul),
        "__lt__": less, "__le__": less_equal, "__gt__": greater, "__ge__": greater_equal,
        "__and__": logical_and, "__or__": logical_or,
        "__neg__": lambda self: negative(self),
        "__pos__": lambda self: self,
        "__abs__": lambda self: abs(self),
        "__invert__": lambda self: logical_not(self),
        "__getitem__": getitem,
        "sum": sum, "mean": mean, "max": max, "min": min,
        "transpose": lambda self, *axes: transpose(
            self, axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else (axes or None)),
        "reshape": lambda self, *shape: reshape(
            self, shape[0] if len(shape) == 1 and not isinstance(shape[0], (int, str)) else shape),
        "astype": cast,
        "named": named,
    }
    for k, f in ops.items():
        setattr(Node, k, f)
    Node.T = property(lambda self: transpose(self))


_install_operators()
