"""`check_grad`: the symbolic gradient against finite differences, in float64."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backends import bind_inputs, function
from .errors import DTypeError, GraphError
from .graph import Node
from .vjp import grad


@dataclass
class GradCheckReport:
    """Per input, the largest relative error between the symbolic gradient and
    finite differences over the directions tried; `max_error` is the largest of all.

    The relative error of one direction is |fd − g·v| / max(|fd|, |g·v|, floor)
    with floor = 1e-6 · (1 + |y|), so a (near-)zero derivative is compared by its
    absolute error instead of by a ratio of two round-off residues.
    """

    errors: dict[str, float]
    directions: dict[str, int]
    value: float
    max_error: float = field(init=False)

    def __post_init__(self):
        self.max_error = max(self.errors.values(), default=0.0)

    def __getitem__(self, key) -> float:
        """The error of one float input, by name or by its placeholder."""
        return self.errors[key if isinstance(key, str) else key.name]

    def ok(self, tol: float = 1e-6) -> bool:
        """True when every input's error is below `tol`."""
        return self.max_error < tol

    def __str__(self):
        width = max([len(n) for n in self.errors] + [5])
        rows = [f"{'input':<{width}}  directions  max rel. error"]
        for n, e in self.errors.items():
            rows.append(f"{n:<{width}}  {self.directions[n]:>10}  {e:.3e}")
        rows.append(f"{'all':<{width}}  {sum(self.directions.values()):>10}  {self.max_error:.3e}")
        return "\n".join(rows)


def check_grad(y: Node, inputs, values, *, eps: float = 1e-3, directions: int = 3,
               full_below: int = 16, seed: int = 0) -> GradCheckReport:
    """Compare ∂y/∂x from `grad` with finite differences, for each float input.

    `inputs` are placeholders and `values` their arrays, in the same order; the
    graph must be float64. Derivatives are taken along `directions` random unit
    directions per input, and along every coordinate when an input has at most
    `full_below` elements (its full Jacobian row). The finite differences use the
    fourth-order central stencil (f(x−2hv) − 8f(x−hv) + 8f(x+hv) − f(x+2hv)) / 12h.
    Integer and bool inputs (targets, masks) are held fixed.
    """
    inputs = [inputs] if isinstance(inputs, Node) else list(inputs)
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if len(inputs) != len(values):
        raise GraphError(f"check_grad: {len(inputs)} inputs but {len(values)} values")
    if not isinstance(y, Node) or y.shape != ():
        raise GraphError("check_grad: y must be a scalar graph value")
    for x in inputs:
        if x.dtype == "float32":
            raise DTypeError(f"check_grad: input {x.name!r} is float32; build the graph in "
                             "float64, where finite differences are accurate enough to judge")
    arrays, _ = bind_inputs(inputs, values)
    arrays = [a.copy() for a in arrays]
    wrt = [x for x in inputs if x.dtype == "float64"]
    f = function(inputs, y)
    g = function(inputs, grad(y, wrt))
    analytic = dict(zip([x.name for x in wrt], g(*arrays)))
    y0 = float(f(*arrays))
    floor = 1e-6 * (1 + abs(y0))
    rng = np.random.default_rng(seed)
    errors: dict[str, float] = {}
    counts: dict[str, int] = {}
    for k, x in enumerate(inputs):
        if x.dtype != "float64":
            continue
        base = arrays[k]
        dirs = []
        if base.size <= full_below:
            for j in range(base.size):
                v = np.zeros(base.size)
                v[j] = 1.0
                dirs.append(v.reshape(base.shape))
        for _ in range(directions if base.size else 0):
            v = rng.standard_normal(base.shape)
            dirs.append(v / (np.linalg.norm(v) or 1.0))
        worst = 0.0
        for v in dirs:
            def at(step):
                args = list(arrays)
                args[k] = base + step * v
                return float(f(*args))
            fd = (at(-2 * eps) - 8 * at(-eps) + 8 * at(eps) - at(2 * eps)) / (12 * eps)
            an = float(np.sum(analytic[x.name] * v))
            err = abs(fd - an) / max(abs(fd), abs(an), floor)
            worst = max(worst, err if np.isfinite(err) else np.inf)
        errors[x.name] = worst
        counts[x.name] = len(dirs)
    return GradCheckReport(errors, counts, y0)
