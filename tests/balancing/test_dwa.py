import math

import pytest

from ps_trainer.core.balancing import make_balancer
from ps_trainer.config.options import ConfigError


def feed(balancer, window_losses):
    """One window per entry: each task's losses, interleaved task by task."""
    for losses in window_losses:
        for position in range(max(len(v) for v in losses.values())):
            for task, values in losses.items():
                if position < len(values):
                    balancer.observe(task, values[position], 1.0)


def test_weights_are_one_until_two_windows_close():
    balancer = make_balancer("dwa", ("a", "b"), {"window_updates": 4})
    feed(balancer, [{"a": [4, 4], "b": [4, 4]}, {"a": [2, 2], "b": [4]}])
    assert balancer.weights() == {"a": 1.0, "b": 1.0}   # second window is one push short


def test_hand_computed_weights_favour_the_task_that_stopped_falling():
    balancer = make_balancer("dwa", ("a", "b"), {"window_updates": 4})
    # Window means: a 4 -> 2 (r = 0.5), b 4 -> 4 (r = 1).
    feed(balancer, [{"a": [5, 3], "b": [4, 4]}, {"a": [1, 3], "b": [3, 5]}])
    # w_a = 2 e^(0.5/2) / (e^(0.5/2) + e^(1/2)) = 2 * 1.2840254 / 2.9327467
    assert balancer.weight("a") == pytest.approx(0.8756470, abs=1e-6)
    assert balancer.weight("b") == pytest.approx(1.1243530, abs=1e-6)
    # Window 3 means: a 2 -> 1.5 (r = 0.75), b 4 -> 2 (r = 0.5); now a is the slower one.
    feed(balancer, [{"a": [1.5, 1.5], "b": [1, 3]}])
    expected_a = 2 * math.exp(0.375) / (math.exp(0.375) + math.exp(0.25))
    assert balancer.weight("a") == pytest.approx(expected_a, rel=1e-12)
    assert balancer.weight("a") == pytest.approx(1.0624187, abs=1e-6)


def test_window_counts_pushes_of_all_tasks_and_averages_per_task():
    balancer = make_balancer("dwa", ("a", "b"), {"window_updates": 4, "temperature": 1.0})
    # Uneven windows: a reports 3 times then once; b once then 3 times.
    feed(balancer, [{"a": [1, 2, 3], "b": [8]}, {"a": [4], "b": [2, 4, 6]}])
    # a: mean 2 -> 4 (r = 2); b: 8 -> 4 (r = 0.5); T = 1.
    expected_a = 2 * math.exp(2) / (math.exp(2) + math.exp(0.5))
    assert balancer.weight("a") == pytest.approx(expected_a, rel=1e-12)


def test_task_without_report_keeps_previous_window_loss():
    balancer = make_balancer("dwa", ("a", "b", "c"), {"window_updates": 2})
    # Window 1: a=4, b=4; window 2: a=2 only (b keeps 4, r_b = 1); c never reports (r_c = 1).
    feed(balancer, [{"a": [4], "b": [4]}, {"a": [2, 2]}])
    z = math.exp(0.25) + 2 * math.exp(0.5)
    assert balancer.weights() == pytest.approx(
        {"a": 3 * math.exp(0.25) / z, "b": 3 * math.exp(0.5) / z, "c": 3 * math.exp(0.5) / z})
    # Window 3: b reports 2, compared with the 4 it kept from window 1 (r_b = 0.5); a: r = 1.
    feed(balancer, [{"b": [2, 2]}])
    z = 2 * math.exp(0.5) + math.exp(0.25)
    assert balancer.weight("b") == pytest.approx(3 * math.exp(0.25) / z)


def test_weights_sum_to_task_count():
    balancer = make_balancer("dwa", ("a", "b", "c"), {"window_updates": 5})
    for step in range(200):
        balancer.observe("abc"[step % 3], 1.0 + (step % 7) * 0.3 + 10.0 / (1 + step), 1.0)
        assert sum(balancer.weights().values()) == pytest.approx(3.0)
    assert len(set(balancer.weights().values())) == 3


def test_unusable_reports_are_ignored_and_not_counted():
    balancer = make_balancer("dwa", ("a",), {"window_updates": 3})
    balancer.observe("a", 2.0, 1.0)
    before = balancer.state_dict()
    for loss in (math.nan, math.inf, 0.0, -1.0):
        balancer.observe("a", loss, 1.0)
    assert balancer.state_dict() == before


@pytest.mark.parametrize("options", [{"window_updates": 0}, {"temperature": 0.0}])
def test_bad_options_are_rejected(options):
    with pytest.raises(ConfigError):
        make_balancer("dwa", ("a",), options)
