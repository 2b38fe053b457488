"""Property-based checks (hypothesis) of small pure helpers."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numpyro_sda.score import composition, fold, unfold, windows_of_states
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


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 4), st.data())
def test_strided_composition_covers_every_state_with_context(k, data):
    window = 2 * k + 1
    stride = data.draw(st.integers(1, k + 1))
    length = data.draw(st.integers(window, window + 40))
    plan = composition(length, window, stride)
    starts, which, offset = plan.starts, plan.which[:, 0], plan.offset[:, 0]
    assert plan.which.shape == (length, 1) and np.all(plan.weight == 1)
    # windows: first at 0, last at L - window, spaced by at most the stride, increasing
    assert starts[0] == 0 and starts[-1] == length - window
    assert np.all(np.diff(starts) >= 1) and np.all(np.diff(starts) <= stride)
    assert len(starts) == -(-(length - window) // stride) + 1
    # each state is scored inside the window that produces it ...
    assert np.all((offset >= 0) & (offset < window))
    np.testing.assert_array_equal(starts[which] + offset, np.arange(length))
    # ... by the window with the nearest centre, so interior states keep k - stride // 2
    # states of context on each side
    interior = slice(k, length - k)
    context = np.minimum(offset, window - 1 - offset)[interior]
    assert context.size == 0 or context.min() >= k - stride // 2
    centres = starts + k
    nearest = np.abs(np.arange(length)[:, None] - centres[None]).min(axis=1)
    np.testing.assert_array_equal(np.abs(offset - k), nearest)
    if stride == 1:  # the paper's composition: all windows, fold's choice
        labels = unfold(np.arange(length, dtype=float), window)
        np.testing.assert_array_equal(labels[which, offset], np.asarray(fold(labels, k)))
    mask = data.draw(hnp.arrays(bool, length))
    expected = np.zeros(len(starts), bool)
    expected[which[mask]] = True
    np.testing.assert_array_equal(windows_of_states(mask, window, stride), expected)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.data())
def test_averaged_composition_weights(k, data):
    window = 2 * k + 1
    average = data.draw(st.integers(0, k))
    length = data.draw(st.integers(window, window + 30))
    plan = composition(length, window, average=average)
    n = length - 2 * k
    assert len(plan.starts) == n
    # weights are convex and every used output is of the state itself
    np.testing.assert_allclose(plan.weight.sum(axis=1), 1.0, rtol=1e-6)
    used = plan.weight > 0
    states = np.broadcast_to(np.arange(length)[:, None], used.shape)
    np.testing.assert_array_equal((plan.starts[plan.which] + plan.offset)[used], states[used])
    # interior states: exactly the windows where they sit within `average` of the centre
    for i in range(k + average, length - k - average):
        got = sorted(plan.which[i][used[i]])
        assert got == list(range(i - k - average, i - k + average + 1))
        np.testing.assert_allclose(plan.weight[i][used[i]], 1.0 / (2 * average + 1))
    if average == 0:  # the paper's composition
        labels = unfold(np.arange(length, dtype=float), window)
        np.testing.assert_array_equal(labels[plan.which[:, 0], plan.offset[:, 0]],
                                      np.asarray(fold(labels, k)))
    mask = data.draw(hnp.arrays(bool, length))
    expected = np.zeros(n, bool)
    expected[plan.which[mask][used[mask]]] = True
    np.testing.assert_array_equal(windows_of_states(mask, window, average=average), expected)


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.just(3)),
                  elements=st.floats(-100, 100, width=32)))
def test_normalize_denormalize_round_trip(x):
    system = Lorenz63()
    back = np.asarray(system.denormalize(system.normalize(x)))
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-4)
