"""The backend registry and `function`, which turns a graph into a NumPy callable."""
from __future__ import annotations

import importlib
import operator
from threading import get_ident
from typing import Callable, Sequence

import numpy as np

from .errors import BackendError, InputError
from .graph import DTYPES, Graph, Node

_SIGNATURE = operator.attrgetter("__class__", "shape", "dtype")


def _signature(arrays) -> list | None:
    """Each array's type, shape and dtype (None for something that has none)."""
    try:
        return list(map(_SIGNATURE, arrays))
    except AttributeError:
        return None

_BACKENDS: dict[str, Callable[[Graph], Callable]] = {}
# Backends that register themselves when their package is imported, so that
# autograph never imports llvmlite unless a user asks for the LLVM backend.
_PLUGINS = {"llvm": "compiler"}


def register_backend(name: str, factory: Callable[[Graph], Callable]) -> None:
    """Make `function(..., backend=name)` build runners with `factory(graph)`.

    A runner is called as ``runner(arrays, dims)`` with checked input arrays and the
    binding of symbolic dims, and returns one array per graph output. A runner whose
    attribute ``owns_outputs`` is true promises a new, distinct, writeable array per
    output on every call, so `Function` hands them over without checking.
    """
    _BACKENDS[name] = factory


def get_backend(name: str) -> Callable[[Graph], Callable]:
    """The factory registered under `name`, importing its plugin package if needed."""
    if name not in _BACKENDS and name in _PLUGINS:
        try:
            importlib.import_module(_PLUGINS[name])
        except ImportError as e:
            raise BackendError(f"backend {name!r} needs the package {_PLUGINS[name]!r}, which "
                               f"failed to import: {e}") from e
    if name not in _BACKENDS:
        raise BackendError(f"unknown backend {name!r}; available: "
                           f"{', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[name]


def available_backends() -> list[str]:
    """Names of the backends that can be used now (plugins are imported to find out)."""
    for name in _PLUGINS:
        try:
            get_backend(name)
        except BackendError:
            pass
    return sorted(_BACKENDS)


_DTYPES = {name: np.dtype(name) for name in DTYPES}   # compared as objects: fast


def bind_inputs(inputs: Sequence[Node], arrays: Sequence) -> tuple[list, dict]:
    """Check each array against its placeholder; return arrays and the dim binding.

    Raises `InputError` naming the input for a wrong dtype, rank or size, and for a
    symbolic dim bound to two different sizes.
    """
    dims: dict[str, int] = {}
    source: dict[str, str] = {}
    out = []
    for x, a in zip(inputs, arrays):
        if isinstance(a, Node):
            raise InputError(f"input {x.name!r}: got a graph value; pass a NumPy array")
        try:
            arr = np.asarray(a)
        except Exception as e:  # ragged lists and other things NumPy refuses
            raise InputError(f"input {x.name!r}: cannot make an array of it ({e})") from None
        want = x.dtype
        if arr.dtype != _DTYPES[want]:
            if want == "int64" and arr.dtype.kind in "iu" and np.can_cast(arr.dtype, np.int64):
                arr = arr.astype(np.int64)
            elif want == "float64" and arr.dtype.kind in "iu" and not isinstance(a, np.ndarray):
                arr = arr.astype(np.float64)  # a Python list of ints for a float input
            else:
                raise InputError(f"input {x.name!r} expects dtype {want}, got {arr.dtype.name}; "
                                 f"convert it with .astype(np.{want})")
        if arr.ndim != len(x.shape):
            raise InputError(f"input {x.name!r} expects {len(x.shape)} dims "
                             f"{list(x.shape)}, got shape {arr.shape}")
        for axis, (d, n) in enumerate(zip(x.shape, arr.shape)):
            if isinstance(d, int):
                if d != n:
                    raise InputError(f"input {x.name!r} expects size {d} on axis {axis} "
                                     f"(shape {list(x.shape)}), got shape {arr.shape}")
            elif d in dims and dims[d] != n:
                raise InputError(f"input {x.name!r} has {d}={n} on axis {axis}, but "
                                 f"{source[d]} bound {d}={dims[d]}")
            else:
                dims[d] = n
                source[d] = f"input {x.name!r}"
        out.append(arr)
    return out, dims


class Function:
    """A graph made callable: NumPy arrays in, NumPy arrays out."""

    def __init__(self, inputs: Sequence[Node], outputs, backend: str = "numpy"):
        self.single = isinstance(outputs, Node)
        inputs = [inputs] if isinstance(inputs, Node) else list(inputs)
        outs = [outputs] if self.single else list(outputs)
        self.graph = Graph(inputs, outs)
        self.backend = backend
        self.runner = get_backend(backend)(self.graph)
        self._owned = bool(getattr(self.runner, "owns_outputs", False))
        self._names = [x.name for x in self.graph.inputs]
        self._last = None    # (signature, dims, repeat, thread) of the last checked call

    def bind(self, *args, **kwargs) -> "Bound":
        """Prepare repeated calls on the same arrays: checks, allocation and (on the
        compiled backend) pointer conversion happen once, here.

        ``step = f.bind(x, h, *params)``; then change the arrays' values in place
        (``step.inputs["x"][...] = next_x``) and call ``step()``, which returns the same
        output arrays every time, overwritten. Inputs that were not C-contiguous arrays
        of the right dtype are bound as copies: write into ``step.inputs[name]``.
        For a single step of a small recurrent cell this is the low-latency path.
        A bound call owns its scratch memory: use one per thread.
        """
        arrays, dims = bind_inputs(self.graph.inputs, self._gather(args, kwargs))
        arrays = [a if a.flags.c_contiguous and a.flags.aligned and a.flags.writeable
                  else np.array(a, order="C") for a in arrays]
        return Bound(self, arrays, dims)

    def _gather(self, args, kwargs) -> list:
        inputs = self.graph.inputs
        if len(args) > len(inputs):
            raise InputError(f"expected at most {len(inputs)} inputs "
                             f"({', '.join(self._names)}), got {len(args)}")
        given = dict(zip(self._names, args))
        for k, v in kwargs.items():
            if k not in self._names:
                raise InputError(f"unknown input {k!r}; the inputs are {', '.join(self._names)}")
            if k in given:
                raise InputError(f"input {k!r} given twice (by position and by name)")
            given[k] = v
        missing = [n for n in self._names if n not in given]
        if missing:
            raise InputError(f"missing input(s) {', '.join(map(repr, missing))}; "
                             f"the inputs are {', '.join(self._names)}")
        return [given[n] for n in self._names]

    def __call__(self, *args, **kwargs):
        # Calls repeat: arrays of the very types, shapes and dtypes that the last call
        # checked bind the same dims, so the checks are not run again (compared in C,
        # ~2 µs for eight arrays here). A runner that can repeat its last call on such
        # arrays (the compiled backend: `Kernel.repeat`) is then called that way,
        # ~8 µs sooner than through its layers (a tiny training step: 84 -> 76 µs).
        last = self._last           # (signature, dims, the runner's repeat, thread)
        sig = _signature(args) if last is not None and not kwargs else None
        if sig is not None and sig == last[0]:
            again = last[2]
            if again is not None and last[3] == get_ident():
                outs = again(args)
                if outs is not None:
                    return outs[0] if self.single else outs
            arrays, dims = list(args), last[1]
        else:
            arrays, dims = bind_inputs(self.graph.inputs, self._gather(args, kwargs))
            sig = _signature(arrays)
        outs = self.runner(arrays, dims)
        repeat = getattr(self.runner, "repeat", None) if self._owned else None
        self._last = (sig, dims, repeat(dims) if repeat is not None else None, get_ident())
        if self._owned:
            return outs[0] if self.single else outs
        # Hand back arrays the caller owns: copy views, read-only graph constants,
        # the caller's own input arrays (an output that is an input) and repeats.
        seen = {id(a) for a in arrays}
        fresh = []
        for o in outs:
            if isinstance(o, np.ndarray) and (not o.flags.owndata or not o.flags.writeable
                                              or id(o) in seen):
                o = np.array(o)
            o = np.asarray(o)
            seen.add(id(o))
            fresh.append(o)
        outs = fresh
        return outs[0] if self.single else outs

    def __repr__(self):
        return f"<Function {self._names} -> {len(self.graph.outputs)} outputs, {self.backend}>"


class Bound:
    """A `Function` bound to arrays (`Function.bind`): ``bound()`` runs it on their
    current values and returns the output arrays, the same ones every call."""

    def __init__(self, fn: Function, arrays: list, dims: dict):
        self.function = fn
        self._single = fn.single
        self.inputs = dict(zip(fn._names, arrays))
        bind = getattr(fn.runner, "bind", None)
        if bind is not None:
            self._call, self.outputs = bind(arrays, dims)
        else:                    # any backend: run, then copy into the bound outputs
            first = [np.array(o) for o in fn.runner(arrays, dims)]
            self.outputs = first

            def call():
                for dst, src in zip(self.outputs, fn.runner(arrays, dims)):
                    np.copyto(dst, src)
                return self.outputs
            self._call = call

    def __call__(self):
        if self._single:
            return self._call()[0]
        return self._call()

    def __repr__(self):
        return f"<Bound {self.function!r}>"


def function(inputs, outputs, backend: str = "numpy") -> Function:
    """A callable that evaluates `outputs` from arrays for the placeholders `inputs`.

    Call it with arrays by position (in the order of `inputs`) or by placeholder
    name. It returns one array if `outputs` is one value, else a list.
    """
    return Function(inputs, outputs, backend)


def _register_numpy():
    from .interpret import NumpyBackend
    register_backend("numpy", NumpyBackend)


_register_numpy()
