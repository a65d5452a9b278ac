"""Exceptions raised by autograph, each meant to be read by a person."""


class GraphError(Exception):
    """Base class of every error autograph raises on purpose."""


class ShapeError(GraphError, ValueError):
    """Shapes that do not fit an op, found when the graph is built."""


class DTypeError(GraphError, TypeError):
    """Dtypes that do not fit an op, found when the graph is built."""


class InputError(GraphError, ValueError):
    """An argument given to a compiled or interpreted function does not fit its input."""


class BackendError(GraphError, RuntimeError):
    """A backend could not be found or could not run a graph."""
