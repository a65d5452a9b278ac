"""The op records: for every op, its shape/dtype rule and its NumPy implementation.

Each other concern keeps its own table keyed by the op name (VJP rules in
`autograph.vjp`, sympy rules in the sympy bridge, LLVM rules in the compiler), and
`tests/test_coverage.py` checks that every op here has an entry in each table.

A shape rule takes the input nodes and the params and returns ``(shape, dtype)``,
or raises `ShapeError`/`DTypeError` naming the op, the shapes and the user's node
names. An implementation takes the input arrays, the params and the binding of
symbolic dims (``{"T": 64, "B": 16}``) and returns an array.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from .errors import DTypeError, InputError, ShapeError
from .graph import FLOAT_DTYPES, Node, type_str


@dataclass(frozen=True)
class Op:
    """What every op always has: a name, a shape/dtype rule and a NumPy implementation."""

    name: str
    rule: Callable[[tuple, Mapping], tuple]
    impl: Callable[[list, Mapping, Mapping], np.ndarray]
    doc: str = ""


OPS: dict[str, Op] = {}


def register(name: str, rule, impl, doc: str = "") -> Op:
    """Add an op record; every op name is registered exactly once."""
    if name in OPS:
        raise ValueError(f"op {name!r} is already registered")
    OPS[name] = op = Op(name, rule, impl, doc)
    return op


def make(op: str, inputs, params=None, name=None) -> Node:
    """A new node of `op`, its type computed (and checked) by the op's shape rule."""
    inputs = tuple(inputs)
    params = dict(params or {})
    shape, dtype = OPS[op].rule(inputs, params)
    return Node(op, inputs, params, shape, dtype, name)


# ----------------------------------------------------------------------------- helpers

def describe(n: Node) -> str:
    """How an error message names a node: its name (or op) and its type."""
    return f"{n.label!r} {n.type_str}"


def fail(op: str, inputs, message: str, cls=ShapeError):
    operands = ", ".join(describe(n) for n in inputs)
    raise cls(f"{op}: {message} (operands: {operands})")


def resolve(shape, dims: Mapping) -> tuple:
    """Concrete shape of `shape` under the dim binding `dims`."""
    try:
        return tuple(d if isinstance(d, int) else dims[d] for d in shape)
    except KeyError as e:
        raise InputError(f"symbolic dim {e.args[0]!r} is not bound; pass an input that has it")


def broadcast_shapes(op: str, inputs, shapes=None) -> tuple:
    """NumPy broadcasting of the inputs' shapes (or of `shapes`, for messages about
    `inputs`), where a named dim matches only itself or 1."""
    shapes = [n.shape for n in inputs] if shapes is None else shapes
    ndim = max(len(s) for s in shapes)
    out = []
    for axis in range(-ndim, 0):
        dims = {s[axis] for s in shapes if len(s) >= -axis} - {1}
        if len(dims) > 1:
            fail(op, inputs, f"shapes cannot be broadcast together: dims {sorted(map(str, dims))} "
                             f"meet at axis {axis}")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def same_dtype(op: str, inputs) -> str:
    dtypes = {n.dtype for n in inputs}
    if len(dtypes) > 1:
        fail(op, inputs, f"dtypes differ ({', '.join(sorted(dtypes))}); "
                         "cast one with .astype(...) first", DTypeError)
    return dtypes.pop()


def need_float(op: str, inputs):
    for n in inputs:
        if n.dtype not in FLOAT_DTYPES:
            fail(op, inputs, f"needs float32 or float64 operands, got {n.dtype} for {n.label!r}",
                 DTypeError)


def need_numeric(op: str, inputs):
    for n in inputs:
        if n.dtype == "bool":
            fail(op, inputs, f"needs numeric operands, got bool for {n.label!r}; "
                             "cast the mask with .astype('float64')", DTypeError)


def norm_axes(op: str, x: Node, axes) -> tuple:
    """`axes` (None, an int or ints, negative allowed) as sorted non-negative ints."""
    if axes is None:
        return tuple(range(x.ndim))
    if isinstance(axes, int):
        axes = (axes,)
    out = []
    for a in axes:
        if not isinstance(a, (int, np.integer)) or not -x.ndim <= a < x.ndim:
            fail(op, [x], f"axis {a!r} is out of range for {x.ndim} dims")
        out.append(int(a) % x.ndim)
    if len(set(out)) != len(out):
        fail(op, [x], f"repeated axis in {tuple(axes)}")
    return tuple(sorted(out))


# ----------------------------------------------------------------------------- sources

def _placeholder_rule(inputs, p):
    return p["shape"], p["dtype"]


def _placeholder_impl(args, p, dims):
    raise InputError("a placeholder has no value of its own; pass it as a function input")


register("placeholder", _placeholder_rule, _placeholder_impl, "a graph input")


_DTYPE_NAMES = {np.dtype(n): n for n in ("float32", "float64", "int64", "bool")}


def _constant_rule(inputs, p):
    v = p["value"]
    return v.shape, _DTYPE_NAMES[v.dtype]


register("constant", _constant_rule, lambda args, p, dims: p["value"], "a constant array")


def _full_rule(inputs, p):
    return p["shape"], p["dtype"]


def _full_impl(args, p, dims):
    return np.full(resolve(p["shape"], dims), p["value"], dtype=p["dtype"])


register("full", _full_rule, _full_impl, "an array of one value; its shape may be symbolic")


def _shape_size_rule(inputs, p):
    return (), p["dtype"]


def _shape_size_impl(args, p, dims):
    return np.asarray(math.prod(resolve(p["dims"], dims)), dtype=p["dtype"])


register("shape_size", _shape_size_rule, _shape_size_impl,
         "the product of some dims, known once symbolic dims are bound")


# ----------------------------------------------------------------------------- elementwise

def _unary_float(name, fn, doc):
    def rule(inputs, p):
        need_float(name, inputs)
        return inputs[0].shape, inputs[0].dtype
    register(name, rule, lambda args, p, dims: fn(args[0]), doc)


def _sigmoid(x):
    # exp of a non-positive number only: no overflow for any x.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


_unary_float("exp", np.exp, "e**x")
_unary_float("log", np.log, "natural logarithm")
_unary_float("tanh", np.tanh, "hyperbolic tangent")
_unary_float("sigmoid", _sigmoid, "logistic function 1/(1+e**-x), stable for every x")
_unary_float("sqrt", np.sqrt, "square root")


def _unary_numeric(name, fn, doc):
    def rule(inputs, p):
        need_numeric(name, inputs)
        return inputs[0].shape, inputs[0].dtype
    register(name, rule, lambda args, p, dims: fn(args[0]), doc)


_unary_numeric("neg", np.negative, "-x")
_unary_numeric("abs", np.abs, "|x|")
_unary_numeric("sign", np.sign, "-1, 0 or 1")
_unary_numeric("relu", lambda x: np.maximum(x, 0).astype(x.dtype, copy=False), "max(x, 0)")


def _binary(name, fn, doc, out_dtype=None, numeric=True):
    def rule(inputs, p):
        dtype = same_dtype(name, inputs)
        if numeric:
            need_numeric(name, inputs)
        return broadcast_shapes(name, inputs), out_dtype or dtype
    register(name, rule, lambda args, p, dims: fn(args[0], args[1]), doc)


_binary("add", np.add, "a + b")
_binary("sub", np.subtract, "a - b")
_binary("mul", np.multiply, "a * b")


def _div(a, b):
    if a.dtype.kind in "iu":
        if np.any(b == 0):
            raise InputError("integer division by zero in a graph")
        return np.floor_divide(a, b)
    return np.divide(a, b)


_binary("div", _div, "a / b (floor division for integers)")


def _pow(a, b):
    if a.dtype.kind in "iu" and np.any(b < 0):
        raise InputError("integer power with a negative exponent; use float operands")
    return np.power(a, b)


_binary("pow", _pow, "a ** b")
_binary("maximum", np.maximum, "elementwise max(a, b)")
_binary("minimum", np.minimum, "elementwise min(a, b)")
_binary("greater", np.greater, "a > b", out_dtype="bool")
_binary("greater_equal", np.greater_equal, "a >= b", out_dtype="bool")
_binary("less", np.less, "a < b", out_dtype="bool")
_binary("less_equal", np.less_equal, "a <= b", out_dtype="bool")
_binary("equal", np.equal, "a == b", out_dtype="bool", numeric=False)
_binary("not_equal", np.not_equal, "a != b", out_dtype="bool", numeric=False)


def _logical(name, fn, doc):
    def rule(inputs, p):
        for n in inputs:
            if n.dtype != "bool":
                fail(name, inputs, f"needs bool masks, got {n.dtype} for {n.label!r}", DTypeError)
        return broadcast_shapes(name, inputs), "bool"
    register(name, rule, lambda args, p, dims: fn(*args), doc)


_logical("logical_and", np.logical_and, "mask and mask")
_logical("logical_or", np.logical_or, "mask or mask")
_logical("logical_not", np.logical_not, "not mask")


def _where_rule(inputs, p):
    cond, a, b = inputs
    if cond.dtype != "bool":
        fail("where", inputs, f"the condition must be a bool mask, got {cond.dtype}", DTypeError)
    dtype = same_dtype("where", (a, b))
    return broadcast_shapes("where", inputs), dtype


register("where", _where_rule, lambda args, p, dims: np.where(*args), "cond ? a : b")


def _cast_rule(inputs, p):
    return inputs[0].shape, p["dtype"]


register("cast", _cast_rule, lambda args, p, dims: args[0].astype(p["dtype"]),
         "convert to another dtype")


def _stop_gradient_rule(inputs, p):
    return inputs[0].shape, inputs[0].dtype


register("stop_gradient", _stop_gradient_rule, lambda args, p, dims: args[0],
         "identity whose gradient is zero")


# ----------------------------------------------------------------------------- matmul

def _matmul_rule(inputs, p):
    a, b = inputs
    dtype = same_dtype("matmul", inputs)
    need_numeric("matmul", inputs)
    if a.ndim < 2 or b.ndim < 2:
        fail("matmul", inputs, "the matmul op needs operands of 2 or more dims "
                               "(the @ operator handles vectors)")
    if a.shape[-1] != b.shape[-2]:
        fail("matmul", inputs, f"inner dims differ: {a.shape[-1]} (last of {a.label!r}) vs "
                               f"{b.shape[-2]} (second-to-last of {b.label!r})")
    batch = broadcast_shapes("matmul", inputs, [a.shape[:-2], b.shape[:-2]])
    return batch + (a.shape[-2], b.shape[-1]), dtype


register("matmul", _matmul_rule, lambda args, p, dims: np.matmul(args[0], args[1]),
         "matrix product with NumPy's batch broadcasting")


# ----------------------------------------------------------------------------- reductions

def _reduce_rule(name):
    def rule(inputs, p):
        x = inputs[0]
        need_numeric(name, inputs)
        axes = p["axes"]
        if p["keepdims"]:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return shape, x.dtype
    return rule


def _max_impl(args, p, dims):
    x = args[0]
    if x.size == 0:
        raise InputError("max of an empty array: bind the reduced dims to at least 1")
    return np.max(x, axis=p["axes"], keepdims=p["keepdims"])


register("sum", _reduce_rule("sum"),
         lambda args, p, dims: np.sum(args[0], axis=p["axes"], keepdims=p["keepdims"],
                                      dtype=args[0].dtype), "sum over axes")
register("max", _reduce_rule("max"), _max_impl, "maximum over axes")


# ----------------------------------------------------------------------------- shape ops

def _broadcast_to_rule(inputs, p):
    x = inputs[0]
    shape = p["shape"]
    if len(shape) < x.ndim or broadcast_shapes("broadcast_to", inputs,
                                               [x.shape, shape]) != tuple(shape):
        fail("broadcast_to", inputs, f"cannot broadcast to {type_str(shape, x.dtype)}")
    return shape, x.dtype


register("broadcast_to", _broadcast_to_rule,
         lambda args, p, dims: np.broadcast_to(args[0], resolve(p["shape"], dims)),
         "repeat along new or size-1 axes")


def _split_dims(shape):
    static = math.prod(d for d in shape if isinstance(d, int))
    symbols = sorted(d for d in shape if isinstance(d, str))
    return static, symbols


def _reshape_rule(inputs, p):
    x = inputs[0]
    shape = p["shape"]
    static_in, sym_in = _split_dims(x.shape)
    static_out, sym_out = _split_dims(shape)
    if sym_in != sym_out or static_in != static_out:
        fail("reshape", inputs, f"cannot reshape to {type_str(shape, x.dtype)}: the sizes "
                                "differ (symbolic dims must be kept as they are)")
    return shape, x.dtype


register("reshape", _reshape_rule,
         lambda args, p, dims: np.reshape(args[0], resolve(p["shape"], dims)),
         "same elements, new shape")


def _transpose_rule(inputs, p):
    x = inputs[0]
    perm = p["perm"]
    if sorted(perm) != list(range(x.ndim)):
        fail("transpose", inputs, f"{perm} is not a permutation of {x.ndim} axes")
    return tuple(x.shape[i] for i in perm), x.dtype


register("transpose", _transpose_rule,
         lambda args, p, dims: np.transpose(args[0], p["perm"]), "permute axes")


def _slice_rule(inputs, p):
    """`index` holds one entry per axis: an int (the axis is dropped) or a slice."""
    x = inputs[0]
    shape = []
    for d, ix in zip(x.shape, p["index"]):
        if isinstance(ix, int):
            if isinstance(d, int) and not -d <= ix < d:
                fail("slice", inputs, f"index {ix} is out of range for an axis of size {d}")
            continue
        if isinstance(d, int):
            shape.append(len(range(*ix.indices(d))))
        elif ix.start is None and ix.stop is None and ix.step in (None, 1, -1):
            shape.append(d)
        else:
            fail("slice", inputs, f"cannot slice symbolic dim {d!r} with {_fmt_slice(ix)}: "
                                  "its length would be unknown; index one step or take all")
    return tuple(shape), x.dtype


def _fmt_slice(s: slice) -> str:
    return ":".join("" if v is None else str(v) for v in (s.start, s.stop, s.step)).rstrip(":") or ":"


def _check_index(x_shape, index, dims, what):
    for axis, (d, ix) in enumerate(zip(resolve(x_shape, dims), index)):
        if isinstance(ix, int) and not -d <= ix < d:
            raise InputError(f"{what}: index {ix} is out of range for axis {axis} of size {d}")


def _slice_impl(args, p, dims):
    x = args[0]
    index = p["index"]
    if any(isinstance(d, str) for d in p["in_shape"]):
        _check_index(p["in_shape"], index, dims, "slice")
    return x[index]


register("slice", _slice_rule, _slice_impl, "basic indexing: ints and slices per axis")


def _unslice_rule(inputs, p):
    return p["in_shape"], inputs[0].dtype


def _unslice_impl(args, p, dims):
    out = np.zeros(resolve(p["in_shape"], dims), dtype=args[0].dtype)
    out[p["index"]] = args[0]
    return out


register("unslice", _unslice_rule, _unslice_impl,
         "zeros of the sliced array's shape with the slice filled in (the slice's VJP)")


def _concat_rule(inputs, p):
    axis = p["axis"]
    dtype = same_dtype("concat", inputs)
    first = inputs[0]
    for n in inputs:
        if n.ndim != first.ndim:
            fail("concat", inputs, "operands have different numbers of dims")
        for i, (a, b) in enumerate(zip(n.shape, first.shape)):
            if i != axis and a != b:
                fail("concat", inputs, f"dims differ on axis {i}, which is not the concat axis")
        if isinstance(n.shape[axis], str):
            fail("concat", inputs, f"cannot concatenate along symbolic dim {n.shape[axis]!r}")
    size = sum(n.shape[axis] for n in inputs)
    return first.shape[:axis] + (size,) + first.shape[axis + 1:], dtype


register("concat", _concat_rule,
         lambda args, p, dims: np.concatenate(args, axis=p["axis"]), "join along an axis")


def _need_int(op, inputs, n):
    if n.dtype != "int64":
        fail(op, inputs, f"indices {n.label!r} must be int64, got {n.dtype}", DTypeError)


def _take_rule(inputs, p):
    table, idx = inputs
    _need_int("take", inputs, idx)
    if table.ndim < 1:
        fail("take", inputs, "the table must have at least one dim")
    return idx.shape + table.shape[1:], table.dtype


def _check_rows(op, idx, rows):
    if idx.size and (idx.min() < 0 or idx.max() >= rows):
        bad = idx[(idx < 0) | (idx >= rows)].flat[0]
        raise InputError(f"{op}: index {bad} is out of range for a table of {rows} rows")


def _take_impl(args, p, dims):
    table, idx = args
    _check_rows("take", idx, table.shape[0])
    return table[idx]


register("take", _take_rule, _take_impl, "rows of a table (embedding lookup)")


def _take_grad_rule(inputs, p):
    ct, idx = inputs
    _need_int("take_grad", inputs, idx)
    if ct.shape[:idx.ndim] != idx.shape:
        fail("take_grad", inputs, "the leading dims of the cotangent must be the index shape")
    return (p["rows"],) + ct.shape[idx.ndim:], ct.dtype


def _take_grad_impl(args, p, dims):
    ct, idx = args
    rows = resolve((p["rows"],), dims)[0]
    _check_rows("take_grad", idx, rows)
    out = np.zeros((rows,) + ct.shape[idx.ndim:], dtype=ct.dtype)
    np.add.at(out, idx, ct)
    return out


register("take_grad", _take_grad_rule, _take_grad_impl,
         "scatter-add rows into a zero table (the VJP of take)")


def _one_hot_rule(inputs, p):
    _need_int("one_hot", inputs, inputs[0])
    return inputs[0].shape + (p["depth"],), p["dtype"]


def _one_hot_impl(args, p, dims):
    idx = args[0]
    _check_rows("one_hot", idx, p["depth"])
    return (idx[..., None] == np.arange(p["depth"])).astype(p["dtype"])


register("one_hot", _one_hot_rule, _one_hot_impl, "indices to one-hot vectors")


def _item_rule(inputs, p):
    (tup,) = inputs
    if tup.dtype != "tuple":
        fail("item", inputs, "takes one output of a multi-output op such as scan")
    return tup.params["out_types"][p["index"]]


register("item", _item_rule, lambda args, p, dims: args[0][p["index"]],
         "one output of a multi-output op")


def _bind_dims_rule(inputs, p):
    x = inputs[0]
    shape = p["shape"]
    if len(shape) != x.ndim or any(
            a != b and isinstance(a, int) and isinstance(b, int) for a, b in zip(shape, x.shape)):
        fail("bind_dims", inputs, f"cannot view as {type_str(shape, x.dtype)}: "
                                  "only a symbolic dim may stand for a static one")
    if tuple(p["in_shape"]) != x.shape:
        fail("bind_dims", inputs, f"in_shape {p['in_shape']} is not the input's shape")
    return shape, x.dtype


def _bind_dims_impl(args, p, dims):
    # Static sizes on one side meet symbolic ones on the other: they must agree now.
    for a, b in zip(p["shape"], p["in_shape"]):
        if isinstance(a, int) != isinstance(b, int):
            sym, static = (a, b) if isinstance(a, str) else (b, a)
            if dims.get(sym, static) != static:
                raise InputError(f"this graph was built for {sym}={static} (by unroll, or "
                                 f"with a fixed size), but it is called with {sym}={dims[sym]}")
    return args[0]


register("bind_dims", _bind_dims_rule, _bind_dims_impl,
         "identity that lets a static dim stand for a symbolic one, checked at run time")
