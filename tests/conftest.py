"""Shared fixtures for the autograph test suite (keep small; append, never overwrite)."""
import numpy as np
import pytest

import autograph as ag


def assert_grad_ok(y, inputs, values, tol=1e-6, **kwargs):
    """check_grad(y, inputs, values) must pass at `tol`; returns the report."""
    report = ag.check_grad(y, inputs, values, **kwargs)
    assert report.ok(tol), f"gradient check failed (tol {tol}):\n{report}"
    return report


@pytest.fixture
def rng():
    """A fresh, seeded random generator per test."""
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def assert_grad():
    """`assert_grad(y, inputs, values, tol=1e-6)`: fails with the check_grad report."""
    return assert_grad_ok


# ----------------------------------------------------------------------------- differential mode
# With AUTOGRAPH_DIFF_BACKEND=llvm, every graph a test runs on the NumPy backend is also
# compiled with that backend, and the two must agree (1e-12 relative in float64, 1e-5
# in float32, exactly for ints and bools, the same error for bad inputs). This turns
# the whole suite into a differential test of the compiler (tests/test_compiler.py
# runs it for the core's test files).

def _agree(ref, got, where):
    ref, got = np.asarray(ref), np.asarray(got)
    assert ref.shape == got.shape and ref.dtype == got.dtype, \
        f"{where}: numpy gives {ref.dtype}{ref.shape}, the compiled kernel {got.dtype}{got.shape}"
    if ref.dtype.kind == "f":
        tol = 1e-12 if ref.dtype == np.float64 else 1e-5
        same_nan = np.array_equal(np.isnan(ref), np.isnan(got))
        fin = np.isfinite(ref)
        assert same_nan and np.array_equal(ref[~fin & ~np.isnan(ref)], got[~fin & ~np.isnan(ref)]), \
            f"{where}: non-finite values differ"
        scale = max(float(np.max(np.abs(ref[fin]), initial=0.0)), 1e-300)
        err = float(np.max(np.abs(ref[fin] - got[fin]), initial=0.0))
        assert err <= tol * scale, f"{where}: max |numpy − compiled| = {err:.3e} (scale {scale:.3e})"
    else:
        assert np.array_equal(ref, got), f"{where}: values differ"


def _differential(name):
    from autograph import backends
    from autograph.interpret import NumpyBackend

    compiled_factory = backends.get_backend(name)

    class Differential:
        # Unrolled graphs of thousands of steps are for drawing and inspection, not for
        # compiling (a scan compiles to a loop); they are run on NumPy alone here.
        MAX_NODES = 20_000

        def __init__(self, graph):
            self.reference = NumpyBackend(graph)
            self.compiled = compiled_factory(graph) if len(graph.nodes) <= self.MAX_NODES \
                else None

        def __call__(self, arrays, dims):
            if self.compiled is None:
                return self.reference(arrays, dims)
            try:
                ref = self.reference(arrays, dims)
            except ag.InputError as e:
                with pytest.raises(ag.InputError):
                    self.compiled(arrays, dims)
                raise e
            got = self.compiled(arrays, dims)
            for k, (r, g) in enumerate(zip(ref, got)):
                _agree(r, g, f"output {k}")
            return ref

    return Differential


def pytest_configure(config):
    import os
    name = os.environ.get("AUTOGRAPH_DIFF_BACKEND")
    if name:
        from autograph import backends
        backends.register_backend("numpy", _differential(name))
