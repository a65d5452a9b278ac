"""The benchmark's references (bench/references.py) against our graph of the same
training step (rnn/workload.py) run by the NumPy interpreter: the loss and every
gradient, for each cell, at small sizes and at T = B = 1.

bench/ holds programs, not a package, so the module is loaded by its path (as
bench/workload.py loads it) instead of adding a bench/__init__.py.

PyTorch and JAX come from the `compare` extra, which `.ci/run` installs: these tests
are not skipped when they are missing, they fail.

Tolerances are relative to the largest value of each array: 1e-10 in float64 (both
sides compute the same formulas in a different order), 1e-4 in float32.
"""
import importlib.util
import pathlib

import numpy as np
import pytest

import autograph as ag
from rnn.workload import training_step

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_references",
                                               ROOT / "bench" / "references.py")
references = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(references)

CELLS = ["elman", "lstm", "gru"]
SHAPES = {"T5B3": (5, 3), "T1B1": (1, 1)}
D, H = 4, 6
TOL = {"float64": 1e-10, "float32": 1e-4}


def graph_step(cell, T, B, dtype):
    """(params, x, y, (loss, grads)) from our graph, run by the NumPy interpreter."""
    model, data, outputs = training_step(cell, D, H, dtype, seed=3)
    params = model.state_dict()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, D)).astype(dtype)
    y = rng.standard_normal((T, B, D)).astype(dtype)
    out = ag.function(data + list(model.nodes().values()), outputs)(x, y, *params.values())
    return params, x, y, (out[0], dict(zip(params, out[1:])))


def assert_same_step(got, truth, dtype):
    """Loss and every gradient within TOL[dtype] of the truth, in the same dtype."""
    (loss, grads), (loss_ref, grads_ref) = got, truth
    tol = TOL[dtype]
    assert np.asarray(loss).dtype == dtype
    assert abs(loss - loss_ref) <= tol * abs(loss_ref), f"loss {loss} vs {loss_ref}"
    assert list(grads) == list(grads_ref)
    for k, ref in grads_ref.items():
        g = grads[k]
        assert g.shape == ref.shape and g.dtype == dtype, f"{k}: {g.dtype}{g.shape}"
        # at T = 1, dW is exactly zero (h_0 = 0): then the reference must be zero too
        err, scale = np.max(np.abs(g - ref)), np.max(np.abs(ref))
        assert err <= tol * scale, f"{k}: max |error| {err:.2e} > {tol} × {scale:.2e}"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", CELLS)
def test_numpy_bptt_matches_the_graph(cell, dtype, shape):
    params, x, y, truth = graph_step(cell, *SHAPES[shape], dtype)
    inputs = dict(params, x=x, y=y)
    before = {k: v.copy() for k, v in inputs.items()}
    assert_same_step(references.numpy_bptt(cell, params, x, y), truth, dtype)
    for k, v in inputs.items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"numpy_bptt changed {k}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", CELLS)
def test_torch_matches_the_graph(cell, dtype, shape):
    params, x, y, truth = graph_step(cell, *SHAPES[shape], dtype)
    step = references.torch_step(cell, params, dtype)
    assert_same_step(step(x, y), truth, dtype)
    assert_same_step(step(x, y), truth, dtype)      # gradients do not accumulate


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", CELLS)
def test_jax_matches_the_graph(cell, dtype, shape):
    T, B = SHAPES[shape]
    params, x, y, truth = graph_step(cell, T, B, dtype)
    step, seconds = references.jax_step(cell, params, dtype, T=T, B=B)
    assert seconds > 0
    assert_same_step(step(x, y), truth, dtype)


def test_a_bad_cell_name_is_a_value_error():
    params, x, y, _ = graph_step("lstm", 2, 2, "float64")
    for call in (lambda: references.numpy_bptt("LSTM", params, x, y),
                 lambda: references.torch_step("lstm2", params, "float64"),
                 lambda: references.jax_step("rnn", params, "float64", T=2, B=2)):
        with pytest.raises(ValueError, match="unknown cell .* choose one of"):
            call()


def test_parameters_of_another_cell_or_dtype_are_a_value_error():
    params, x, y, _ = graph_step("lstm", 2, 2, "float64")
    with pytest.raises(ValueError, match="cell.U has shape"):
        references.numpy_bptt("gru", params, x, y)
    with pytest.raises(ValueError, match="y is float32, x is float64"):
        references.numpy_bptt("lstm", params, x, y.astype("float32"))
