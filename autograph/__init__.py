"""autograph: symbolic reverse-mode autodiff for recurrent networks.

Build graphs with numpy-like code on placeholders, differentiate them with `grad`
(the gradient is itself a graph), loop over time with `scan`, expand loops with
`unroll`, and run graphs with `function(inputs, outputs, backend=...)`.
"""
from .api import (
    abs, add, as_dtype, bind_dims, as_node, broadcast_to, cast, clip, concat, constant, cross_entropy,
    divide, equal, exp, expand_dims, full, getitem, greater, greater_equal, item, less,
    less_equal, log, log_softmax, logical_and, logical_not, logical_or, logsumexp, matmul,
    max, maximum, mean, min, minimum, multiply, named, negative, not_equal, one_hot, ones,
    ones_like, placeholder, power, relu, reshape, shape_size, sigmoid, sign, softmax, sqrt,
    square, squeeze, stack, stop_gradient, subtract, sum, take, tanh, transpose, where,
    zeros, zeros_like,
)
from .backends import Function, available_backends, function, get_backend, register_backend
from .check import GradCheckReport, check_grad
from .errors import BackendError, DTypeError, GraphError, InputError, ShapeError
from .graph import DTYPES, Graph, Node, toposort
from .interpret import evaluate
from .ops import OPS
from .printing import format_graph
from .scan import scan
from .sympy_bridge import SYMPY, check_derivation, elman_derivation, to_sympy, verify_grad
from .typecheck import typecheck
from .unroll import unroll
from .vjp import VJP, grad, grad_steps, vjp

__version__ = "0.1.0"

__all__ = [name for name in dir() if not name.startswith("_")]
