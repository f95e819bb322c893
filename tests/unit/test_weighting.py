"""Mapping functions: property-based checks of the normalisation and monotonicity (no torch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from east.weighting import MAPPINGS, canonical, compute_weights, entropy, get_mapping, register_mapping

signals = st.lists(st.floats(min_value=0.01, max_value=3.0, allow_nan=False), min_size=1, max_size=50).map(
    np.array
)
unit_signals = st.lists(
    st.floats(min_value=0.0, max_value=0.99, allow_nan=False), min_size=1, max_size=50
).map(np.array)
sharpness = st.floats(min_value=-3.0, max_value=3.0, allow_nan=False)


@pytest.mark.parametrize("name", ["power", "uniform", "exponential"])
@given(h=signals, a=sharpness)
@settings(max_examples=60, deadline=None)
def test_entropy_mappings_average_one_and_are_non_negative(name, h, a):
    w = MAPPINGS[name](h, a)
    assert w.shape == h.shape
    assert np.all(w >= 0)
    assert w.mean() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", ["accuracy", "rejected", "local_uncertainty"])
@given(s=unit_signals, a=st.floats(min_value=0.0, max_value=3.0))
@settings(max_examples=60, deadline=None)
def test_baseline_mappings_average_one(name, s, a):
    s = s if name == "accuracy" else s + 0.01  # R, u > 0 keep some weight non-zero
    w = MAPPINGS[name](s, a)
    assert np.all(w >= 0)
    assert w.mean() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", ["power", "exponential"])
@given(h=signals, a=sharpness)
@settings(max_examples=60, deadline=None)
def test_monotone_in_entropy(name, h, a):
    order = np.argsort(h, kind="stable")
    w = MAPPINGS[name](h, a)[order]
    diffs = np.diff(w)
    tol = 1e-9 * max(1.0, float(np.abs(w).max()))
    if a > 0:
        assert np.all(diffs >= -tol)
    elif a < 0:
        assert np.all(diffs <= tol)
    else:
        assert np.allclose(w, 1.0)


@given(h=signals)
def test_power_with_zero_sharpness_is_uniform(h):
    np.testing.assert_array_equal(MAPPINGS["power"](h, 0.0), MAPPINGS["uniform"](h, 2.0))


@given(h=signals, a=sharpness, scale=st.floats(min_value=0.1, max_value=10.0))
@settings(max_examples=60, deadline=None)
def test_power_is_scale_invariant(h, a, scale):
    np.testing.assert_allclose(MAPPINGS["power"](h * scale, a), MAPPINGS["power"](h, a), rtol=1e-9)


def test_power_matches_the_paper_formula():
    h = np.array([0.5, 1.0, 2.0])
    expected = h**2 / np.mean(h**2)
    np.testing.assert_allclose(MAPPINGS["power"](h, 2.0), expected, rtol=1e-14)


def test_accuracy_and_rejected_read_their_own_statistic():
    stats = {"entropy": [1.0, 2.0], "accuracy": [0.25, 0.75], "rejected": [0.5, 0.25]}
    expected = {"accuracy": [1.5, 0.5], "rejected": [4 / 3, 2 / 3], "power": [2 / 3, 4 / 3]}
    for name, weights in expected.items():
        signal = get_mapping(name).signal
        np.testing.assert_allclose(compute_weights(stats[signal], name, 1.0), weights)


def test_exponential_is_defined_at_zero_for_negative_sharpness():
    w = MAPPINGS["exponential"](np.array([0.0, 1.0, 2.0]), -2.0)
    assert np.all(np.isfinite(w)) and w[0] > w[1] > w[2]
    assert MAPPINGS["exponential"](np.array([0.0, 1000.0]), 5.0).mean() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("name", "signal", "a", "message"),
    [
        ("power", [1.0, 2.0], math.nan, "finite"),
        ("power", [1.0, 2.0], math.inf, "finite"),
        ("power", [1.0, -0.5], 1.0, "negative entropy at index 1"),
        ("power", [1.0, math.nan], 1.0, "non-finite entropy at index 1"),
        ("power", [0.0, 1.0], -1.0, "undefined for a zero entropy"),
        ("power", [], 1.0, "empty"),
        ("power", [0.0, 0.0], 1.0, "every raw weight is zero"),
        ("accuracy", [1.0, 0.5], -1.0, "undefined"),
        ("accuracy", [1.5], 1.0, "above 1"),
        ("rejected", [0.0, 0.5], -2.0, "undefined"),
    ],
)
def test_invalid_input_names_the_problem(name, signal, a, message):
    with pytest.raises(ValueError, match=message):
        MAPPINGS[name](signal, a)


def test_registry():
    with pytest.raises(ValueError, match="allowed: .*power"):
        get_mapping("powr")
    with pytest.raises(ValueError, match="already registered"):
        register_mapping("power")(lambda h, a: h)
    with pytest.raises(ValueError, match="unknown signal"):
        register_mapping("x", signal="temperature")


def test_entropy_helper():
    assert entropy([5]) == 0.0
    assert entropy([1, 1, 1, 1]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        entropy([])


@pytest.mark.parametrize("name", sorted(n for n, spec in MAPPINGS.items() if spec.uniform_at_zero))
@given(values=st.lists(st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=1, max_size=50))
@settings(max_examples=40, deadline=None)
def test_mappings_uniform_at_zero_give_exactly_uniform_weights(name, values):
    """What lets a vanilla run share uniform's cached records (canonical): weights exactly 1,
    not merely close, even where the signal is 0."""
    assert canonical(name, 0.0) == ("uniform", 0.0)
    assert np.array_equal(MAPPINGS[name](np.array(values), 0.0), np.ones(len(values)))


def test_canonical_keeps_every_weighted_run_its_own():
    assert canonical("power", 1.0) == ("power", 1.0)
    assert canonical("power", -0.5) == ("power", -0.5)
    assert canonical("uniform", 2.0) == ("uniform", 0.0)
