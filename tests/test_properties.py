"""Property-based checks (hypothesis) of small pure helpers."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numpyro_sda.score import fold, unfold, windows_of_states
from numpyro_sda.systems import Lorenz63


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3), st.data())
def test_windows_of_states_covers_exactly_the_producers(k, data):
    window = 2 * k + 1
    length = data.draw(st.integers(window, window + 12))
    mask = data.draw(hnp.arrays(bool, length))
    active = windows_of_states(mask, window)
    assert active.shape == (length - 2 * k,)
    # the composed output of state i comes from window min(max(i - k, 0), L - 2k - 1):
    # label every window output by its state index and fold
    labels = unfold(np.arange(length, dtype=float), window)  # (L - 2k, window)
    composed = np.asarray(fold(labels, k))
    np.testing.assert_array_equal(composed, np.arange(length))
    producer = np.clip(np.arange(length) - k, 0, length - 2 * k - 1)
    expected = np.zeros(length - 2 * k, bool)
    expected[producer[mask]] = True
    np.testing.assert_array_equal(active, expected)


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.just(3)),
                  elements=st.floats(-100, 100, width=32)))
def test_normalize_denormalize_round_trip(x):
    system = Lorenz63()
    back = np.asarray(system.denormalize(system.normalize(x)))
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-4)
