"""Bad inputs fail early with errors that name the offending value, shape or dtype."""
import re

import numpy as np
import pytest

import autograph as ag


def esc(s):
    return re.escape(s)


@pytest.fixture
def a():
    return ag.placeholder("a", (3, 4))


# ----------------------------------------------------------------------------- shapes

def test_error_hierarchy():
    assert issubclass(ag.ShapeError, ag.GraphError) and issubclass(ag.ShapeError, ValueError)
    assert issubclass(ag.DTypeError, ag.GraphError) and issubclass(ag.DTypeError, TypeError)
    assert issubclass(ag.InputError, ag.GraphError) and issubclass(ag.InputError, ValueError)
    assert issubclass(ag.BackendError, ag.GraphError)


@pytest.mark.parametrize("op", [lambda x, y: x + y, lambda x, y: x * y, ag.maximum,
                                lambda x, y: ag.where(x > 0, x, y)])
def test_broadcast_mismatch_names_shapes_and_operands(a, op):
    b = ag.placeholder("b", (5,))
    with pytest.raises(ag.ShapeError, match=r"cannot be broadcast.*'a' f64\[3,4\].*'b' f64\[5\]"):
        op(a, b)


def test_symbolic_dims_only_broadcast_with_themselves_or_one():
    x = ag.placeholder("x", ("B", 3))
    y = ag.placeholder("y", ("T", 3))
    with pytest.raises(ag.ShapeError, match=r"'x' f64\[B,3\], 'y' f64\[T,3\]"):
        x + y
    assert (x + ag.placeholder("z", (1, 3))).shape == ("B", 3)


@pytest.mark.parametrize("sb,msg", [
    ((5, 2), "inner dims differ: 4 (last of 'a') vs 5 (second-to-last of 'b')"),
    ((2, 5, 2), "inner dims differ: 4 (last of 'a') vs 5 (second-to-last of 'b')"),
    ((5,), "inner dims differ: 4 (last of 'a') vs 5 (length of 'b')"),
])
def test_matmul_inner_dim_mismatch(a, sb, msg):
    b = ag.placeholder("b", sb)
    with pytest.raises(ag.ShapeError, match=esc(msg)):
        a @ b
    with pytest.raises(ag.ShapeError, match=r"'a' f64\[3,4\]"):
        ag.matmul(a, b)


def test_matmul_vector_first_and_vectors():
    v = ag.placeholder("v", (5,))
    a = ag.placeholder("a", (3, 4))
    with pytest.raises(ag.ShapeError, match=esc("5 (last of 'v') vs 3 (second-to-last of 'a')")):
        v @ a
    with pytest.raises(ag.ShapeError, match="vectors of different lengths.*'v' f64\\[5\\]"):
        v @ ag.placeholder("w", (4,))
    with pytest.raises(ag.ShapeError, match="at least one dim"):
        ag.matmul(ag.placeholder("s", ()), a)


def test_matmul_batch_mismatch(a):
    x = ag.placeholder("x", (2, 3, 4))
    y = ag.placeholder("y", (5, 4, 6))
    with pytest.raises(ag.ShapeError, match=r"matmul.*'x' f64\[2,3,4\], 'y' f64\[5,4,6\]"):
        x @ y


@pytest.mark.parametrize("build,match", [
    (lambda a: ag.sum(a, axis=2), r"sum: axis 2 is out of range for 2 dims.*'a' f64\[3,4\]"),
    (lambda a: ag.max(a, axis=-3), r"max: axis -3 is out of range"),
    (lambda a: ag.sum(a, axis=(0, -2)), r"repeated axis"),
    (lambda a: ag.reshape(a, (5, 3)), r"cannot reshape to f64\[5,3\].*'a' f64\[3,4\]"),
    (lambda a: ag.reshape(a, (-1, 5)), r"cannot infer -1"),
    (lambda a: ag.reshape(a, (-1, -1)), r"at most one dim may be -1"),
    (lambda a: ag.transpose(a, (0, 0)), r"\(0, 0\) is not a permutation of 2 axes"),
    (lambda a: ag.broadcast_to(a, (4, 4)), r"broadcast_to.*'a' f64\[3,4\]"),
    (lambda a: ag.squeeze(a, 0), r"squeeze: axis 0 has size 3, not 1"),
    (lambda a: ag.concat([a, ag.placeholder("b", (5,))]), r"different numbers of dims"),
    (lambda a: ag.concat([a, ag.placeholder("b", (3, 5))]), r"dims differ on axis 1"),
    (lambda a: ag.stack([a, ag.placeholder("b", (4, 3))]), r"same shape.*'b' f64\[4,3\]"),
    (lambda a: a[0, 0, 0], r"too many indices \(3\) for 2 dims"),
    (lambda a: a[3], r"index 3 is out of range for an axis of size 3"),
    (lambda a: a[:, -5], r"index -5 is out of range for an axis of size 4"),
])
def test_shape_errors_name_the_problem(a, build, match):
    with pytest.raises(ag.ShapeError, match=match):
        build(a)


def test_bad_placeholder_shapes():
    with pytest.raises(ag.ShapeError, match=r"placeholder 'z': negative dim -1"):
        ag.placeholder("z", (3, -1))
    with pytest.raises(ag.ShapeError, match=r"placeholder 'z': shape entry '3x'"):
        ag.placeholder("z", (3, "3x"))
    with pytest.raises(ag.ShapeError, match=r"placeholder 'z': shape entry True"):
        ag.placeholder("z", (True,))
    with pytest.raises(ag.GraphError, match="non-empty string name"):
        ag.placeholder("", (3,))


def test_symbolic_dim_cannot_be_sliced_to_unknown_length():
    x = ag.placeholder("x", ("T", 3))
    with pytest.raises(ag.ShapeError, match=r"cannot slice symbolic dim 'T' with 1:"):
        x[1:]
    with pytest.raises(ag.ShapeError, match="symbolic dim 'T'"):
        ag.concat([x, x], 0)


def test_indexing_with_arrays_is_refused(a):
    with pytest.raises(ag.GraphError, match=r"indexing 'a' with an array.*use take"):
        a[np.array([0, 1])]
    with pytest.raises(ag.GraphError, match="single ellipsis"):
        a[..., ...]
    with pytest.raises(ag.GraphError, match=r"cannot index 'a' with 'x'"):
        a["x"]


# ----------------------------------------------------------------------------- dtypes

def test_dtype_mismatch_names_both(a):
    i = ag.placeholder("i", (3, 4), "int64")
    with pytest.raises(ag.DTypeError, match=r"add: dtypes differ \(float64, int64\).*'i' i64"):
        a + i
    with pytest.raises(ag.DTypeError, match=r"matmul: dtypes differ \(float32, float64\)"):
        a @ ag.placeholder("f", (4, 2), "float32")


@pytest.mark.parametrize("build,match", [
    (lambda i, m: ag.log(i), r"log: needs float32 or float64 operands, got int64 for 'i'"),
    (lambda i, m: ag.tanh(m), r"tanh: needs float32 or float64 operands, got bool for 'm'"),
    (lambda i, m: ag.mean(i), r"mean: needs a float operand"),
    (lambda i, m: m + m, r"add: needs numeric operands, got bool for 'm'"),
    (lambda i, m: ag.where(i, i, i), r"where: the condition must be a bool mask, got int64"),
    (lambda i, m: ag.logical_and(m, i > 0).astype("float64") & m, r"needs bool masks"),
    (lambda i, m: ag.take(ag.placeholder("t", (5, 2)), ag.cast(i, "float64")),
     r"take: indices 'cast#\d+' must be int64, got float64"),
    (lambda i, m: ag.one_hot(m, 3), r"one_hot: indices 'm' must be int64, got bool"),
    (lambda i, m: i * 0.5, r"cannot combine 'i' i64\[3,4\] with the float 0.5"),
    (lambda i, m: m * 2, r"cannot combine the mask 'm' bool\[3,4\] with the number 2"),
])
def test_dtype_errors_name_the_value(build, match):
    i = ag.placeholder("i", (3, 4), "int64")
    m = ag.placeholder("m", (3, 4), "bool")
    with pytest.raises(ag.DTypeError, match=match):
        build(i, m)


def test_unsupported_dtypes():
    with pytest.raises(ag.DTypeError, match="complex128 is not supported; use one of float32"):
        ag.placeholder("z", (3,), "complex128")
    with pytest.raises(ag.DTypeError, match="'nonsense' is not a dtype"):
        ag.placeholder("z", (3,), "nonsense")


def test_cross_entropy_errors(a):
    with pytest.raises(ag.DTypeError, match="targets must be int64 class indices, got float64"):
        ag.cross_entropy(a, ag.placeholder("t", (3,)))
    with pytest.raises(ag.ShapeError, match=r"targets must have shape \[3\].*got \[4\]"):
        ag.cross_entropy(a, ag.placeholder("t", (4,), "int64"))
    with pytest.raises(ag.GraphError, match="reduction must be 'mean', 'sum' or 'none'"):
        ag.cross_entropy(a, ag.placeholder("t", (3,), "int64"), reduction="avg")


# ----------------------------------------------------------------------------- function inputs

@pytest.fixture
def f(a):
    return ag.function([a, ag.placeholder("n", (), "int64")], a * 2)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_])
def test_wrong_input_dtype_names_the_input(f, dtype):
    with pytest.raises(ag.InputError, match=f"input 'a' expects dtype float64, got "
                                            f"{np.dtype(dtype).name}"):
        f(np.zeros((3, 4), dtype), 1)


def test_float_for_int_input_is_refused(f):
    with pytest.raises(ag.InputError, match="input 'n' expects dtype int64, got float64"):
        f(np.zeros((3, 4)), 1.5)


def test_wrong_rank_names_the_input(f):
    with pytest.raises(ag.InputError, match=esc("input 'a' expects 2 dims [3, 4], got shape (3, 4, 1)")):
        f(np.zeros((3, 4, 1)), 1)
    with pytest.raises(ag.InputError, match=esc("input 'a' expects 2 dims [3, 4], got shape (12,)")):
        f(np.zeros(12), 1)


def test_wrong_size_names_the_input_and_axis(f):
    with pytest.raises(ag.InputError, match=esc("input 'a' expects size 4 on axis 1 (shape [3, 4]), "
                                                "got shape (3, 5)")):
        f(np.zeros((3, 5)), 1)


def test_missing_extra_and_unknown_inputs(f):
    with pytest.raises(ag.InputError, match="missing input.*'n'"):
        f(np.zeros((3, 4)))
    with pytest.raises(ag.InputError, match="missing input.*'a', 'n'"):
        f()
    with pytest.raises(ag.InputError, match="expected at most 2 inputs"):
        f(np.zeros((3, 4)), 1, 2)
    with pytest.raises(ag.InputError, match="unknown input 'z'; the inputs are a, n"):
        f(np.zeros((3, 4)), n=1, z=3)
    with pytest.raises(ag.InputError, match="input 'a' given twice"):
        f(np.zeros((3, 4)), a=np.zeros((3, 4)), n=1)
    with pytest.raises(ag.InputError, match="input 'a': got a graph value"):
        f(ag.placeholder("q", (3, 4)), 1)
    with pytest.raises(ag.InputError, match="input 'a': cannot make an array"):
        f([[1.0, 2.0], [3.0]], 1)


def test_inputs_by_name_work(f):
    np.testing.assert_array_equal(f(n=0, a=np.ones((3, 4))), np.full((3, 4), 2.0))


def test_output_needs_an_input_not_listed(a):
    b = ag.placeholder("b", (3, 4))
    with pytest.raises(ag.GraphError, match="depend on placeholder.*'b'.*add them to the inputs"):
        ag.function([a], a + b)


def test_duplicate_input_names():
    with pytest.raises(ag.GraphError, match=r"share the name\(s\) \['x'\]"):
        ag.function([ag.placeholder("x", (1,)), ag.placeholder("x", (1,))], ag.constant(1.0))


def test_symbolic_dim_bound_inconsistently():
    x = ag.placeholder("x", ("B", 3))
    y = ag.placeholder("y", ("B",))
    g = ag.function([x, y], ag.sum(x, 1) + y)
    with pytest.raises(ag.InputError, match="input 'y' has B=4 on axis 0, but input 'x' bound B=2"):
        g(np.zeros((2, 3)), np.zeros(4))
    # Consistent bindings of different sizes are fine.
    assert g(np.zeros((2, 3)), np.zeros(2)).shape == (2,)
    assert g(np.zeros((5, 3)), np.zeros(5)).shape == (5,)


def test_symbolic_dim_bound_inconsistently_within_one_input():
    x = ag.placeholder("x", ("N", "N"))
    g = ag.function([x], x * 2)
    with pytest.raises(ag.InputError, match="input 'x' has N=3 on axis 1, but input 'x' bound N=2"):
        g(np.zeros((2, 3)))


def test_run_time_index_errors_name_the_node():
    table = ag.placeholder("table", (6, 2))
    idx = ag.placeholder("idx", (3,), "int64")
    g = ag.function([table, idx], ag.take(table, idx, name="emb"))
    with pytest.raises(ag.InputError, match="take: index 6 is out of range for a table of 6 rows"
                                            ".*'emb'"):
        g(np.zeros((6, 2)), np.array([0, 6, 1]))
    with pytest.raises(ag.InputError, match="index -1 is out of range"):
        g(np.zeros((6, 2)), np.array([0, -1, 1]))
    with pytest.raises(ag.InputError, match="one_hot: index 3 is out of range"):
        ag.function([idx], ag.one_hot(idx, 3))(np.array([0, 3, 1]))


# ----------------------------------------------------------------------------- grad

def test_grad_of_non_scalar(a):
    with pytest.raises(ag.GraphError, match=r"grad: 'twice' has shape \[3, 4\]; grad needs a scalar"):
        ag.grad(ag.named(a * 2, "twice"), [a])


def test_grad_of_int_output():
    i = ag.placeholder("i", (3,), "int64")
    with pytest.raises(ag.DTypeError, match="grad: 'total' has dtype int64; grad needs a float scalar"):
        ag.grad(ag.sum(i, name="total"), [ag.placeholder("x", ())])


def test_grad_wrt_int_or_bool(a):
    i = ag.placeholder("i", (3,), "int64")
    m = ag.placeholder("m", (3,), "bool")
    y = ag.sum(ag.cast(i, "float64")) + ag.sum(ag.cast(m, "float64")) + ag.sum(a)
    with pytest.raises(ag.DTypeError, match="cannot differentiate with respect to 'i' of dtype int64"):
        ag.grad(y, [a, i])
    with pytest.raises(ag.DTypeError, match="with respect to 'm' of dtype bool"):
        ag.grad(y, m)


def test_grad_wrt_non_node(a):
    with pytest.raises(ag.GraphError, match="wrt must hold graph values, got ndarray"):
        ag.grad(ag.sum(a), [np.zeros(3)])


def test_grad_wrt_unrelated_value_is_zero(a):
    b = ag.placeholder("b", (2,))
    g = ag.grad(ag.sum(a), b)
    np.testing.assert_array_equal(ag.function([b], g)(np.ones(2)), np.zeros(2))


def test_check_grad_argument_errors(a):
    with pytest.raises(ag.GraphError, match="1 inputs but 2 values"):
        ag.check_grad(ag.sum(a), [a], [np.zeros((3, 4)), 1])
    with pytest.raises(ag.GraphError, match="y must be a scalar"):
        ag.check_grad(a, [a], [np.zeros((3, 4))])
    x32 = ag.placeholder("x32", (2,), "float32")
    with pytest.raises(ag.DTypeError, match="input 'x32' is float32; build the graph in float64"):
        ag.check_grad(ag.sum(x32), [x32], [np.zeros(2, np.float32)])


# ----------------------------------------------------------------------------- Python protocol

def test_bool_of_node_raises(a):
    with pytest.raises(TypeError, match=r"truth value of graph value 'pos' is unknown.*where"):
        bool(ag.named(a > 0, "pos"))
    with pytest.raises(TypeError, match="truth value"):
        if ag.sum(a) > 0:
            pass
    with pytest.raises(TypeError, match="truth value"):
        ag.sum(a) > 0 and True  # noqa: B015


def test_iter_and_len(a):
    with pytest.raises(TypeError, match="graph value 'a' is not iterable"):
        list(a)
    assert len(a) == 3
    with pytest.raises(TypeError, match="first dim 'B' is symbolic"):
        len(ag.placeholder("z", ("B",)))
    with pytest.raises(TypeError, match="len\\(\\) of a scalar"):
        len(ag.sum(a))


def test_nodes_are_immutable(a):
    with pytest.raises(AttributeError, match="immutable"):
        a.shape = (4, 3)


def test_bad_constants_and_operands(a):
    with pytest.raises(ag.GraphError, match="constant\\(\\) takes an array, not a graph value"):
        ag.constant(a)
    with pytest.raises(ag.GraphError, match="cannot use a dict as a graph value"):
        a + {}
    with pytest.raises(ag.DTypeError, match="constant of dtype <U1 is not supported"):
        ag.constant(np.array(["x"]))


# ----------------------------------------------------------------------------- backends

def test_unknown_backend_lists_available(a):
    with pytest.raises(ag.BackendError, match=r"unknown backend 'nope'; available: .*numpy"):
        ag.function([a], a, backend="nope")
    with pytest.raises(ag.BackendError, match="unknown backend 'nope'"):
        ag.get_backend("nope")
    assert "numpy" in ag.available_backends()
