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
