"""`Module`: parameters held as NumPy arrays, each with one graph placeholder."""
from __future__ import annotations

from typing import Iterator

import numpy as np

import autograph as ag


class Module:
    """A named group of parameters (NumPy arrays) and of child modules.

    `params` maps a short name (``"U"``) to an array. Each parameter has one graph
    placeholder, named ``"<module name>.<short name>"`` (``"lstm.l0.U"``), so that a
    graph built from the module takes the parameter values as ordinary inputs.
    """

    def __init__(self, name: str, dtype="float64"):
        if not isinstance(name, str) or not name:
            raise ValueError(f"a module needs a non-empty name, got {name!r}")
        self.name = name
        self.dtype = ag.as_dtype(dtype)
        if self.dtype not in ("float32", "float64"):
            raise ag.DTypeError(f"{name}: parameters must be float32 or float64, got {self.dtype}")
        self.params: dict[str, np.ndarray] = {}
        self.children: list[Module] = []
        self._nodes: dict[str, ag.Node] = {}

    # ----------------------------------------------------------------- parameters

    def add(self, key: str, shape) -> None:
        """Declare a parameter (zeros until `init`)."""
        self.params[key] = np.zeros(shape, self.dtype)

    def p(self, key: str) -> ag.Node:
        """The placeholder of parameter `key` (one per parameter, made on first use)."""
        if key not in self.params:
            raise KeyError(f"{self.name} has no parameter {key!r}; it has {sorted(self.params)}")
        node = self._nodes.get(key)
        if node is None:
            value = self.params[key]
            node = ag.placeholder(f"{self.name}.{key}", value.shape, self.dtype)
            self._nodes[key] = node
        return node

    def modules(self) -> Iterator[Module]:
        """This module and all its descendants, parents first."""
        stack = [self]
        while stack:
            m = stack.pop()
            yield m
            stack.extend(reversed(m.children))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter of the tree by full name (``"lstm.l0.U"``), in a fixed order.
        The arrays are the live parameters, not copies: optimizers update them in place."""
        return {f"{m.name}.{k}": v for m in self.modules() for k, v in m.params.items()}

    def nodes(self) -> dict[str, ag.Node]:
        """The placeholders of every parameter, with the keys of `state_dict`."""
        return {f"{m.name}.{k}": m.p(k) for m in self.modules() for k in m.params}

    def load_state_dict(self, values: dict) -> None:
        """Set every parameter from `values` (full names). Checks names, shapes and that
        the values are finite before changing anything."""
        own = self.state_dict()
        missing = sorted(set(own) - set(values))
        unknown = sorted(set(values) - set(own))
        if missing or unknown:
            raise ValueError(f"{self.name}: parameters do not match this model"
                             + (f"; missing {missing}" if missing else "")
                             + (f"; unknown {unknown}" if unknown else ""))
        new = {}
        for k, v in values.items():
            v = np.asarray(v)
            if v.shape != own[k].shape:
                raise ValueError(f"{self.name}: parameter {k!r} has shape {list(v.shape)}, "
                                 f"this model needs {list(own[k].shape)}")
            if v.dtype.kind != "f":
                raise ag.DTypeError(f"{self.name}: parameter {k!r} has dtype {v.dtype}; "
                                    "parameters are floats")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{self.name}: parameter {k!r} has non-finite values "
                                 "(NaN or inf)")
            new[k] = v
        for m in self.modules():
            for k in m.params:
                m.params[k] = np.array(new[f"{m.name}.{k}"], dtype=m.dtype)

    def init(self, seed: int = 0):
        """Fresh random parameters for the whole tree (each module's `reset`); returns self."""
        rng = np.random.default_rng(seed)
        for m in self.modules():
            m.reset(rng)
        return self

    def reset(self, rng: np.random.Generator) -> None:
        """PyTorch's default: every parameter uniform in ±1/√fan, fan = `self.fan`."""
        bound = 1.0 / np.sqrt(max(self.fan, 1))
        for k, v in self.params.items():
            self.params[k] = rng.uniform(-bound, bound, v.shape).astype(self.dtype)

    fan = 1

    def num_params(self) -> int:
        return sum(v.size for v in self.state_dict().values())

    def __repr__(self):
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in self.params.items())
        return f"{type(self).__name__}({self.name!r}: {shapes})"
