"""Properties every registered balancing method must have."""
import json
import math
import random

import pytest

from ps_trainer.core.balancing import BALANCERS, Balancer, make_balancer

TASKS = ("rotation", "jigsaw", "colorization")


def random_reports(seed: int, count: int):
    """Losses and norms over several orders of magnitude, one task at a time at random."""
    rng = random.Random(seed)
    for _ in range(count):
        yield rng.choice(TASKS), math.exp(rng.gauss(0, 2)), math.exp(rng.gauss(0, 2))


def trained(method: str, count: int = 537) -> Balancer:
    """Saved mid-window: a count that is no round number of pushes."""
    balancer = make_balancer(method, TASKS)
    for task, loss, norm in random_reports(seed=0, count=count):
        balancer.observe(task, loss, norm)
    return balancer


@pytest.mark.parametrize("method", BALANCERS.names())
def test_weights_stay_positive_and_finite(method):
    balancer = make_balancer(method, TASKS)
    for task, loss, norm in random_reports(seed=1, count=500):
        balancer.observe(task, loss, norm)
        assert set(balancer.weights()) == set(TASKS)
        assert all(0 < w < math.inf for w in balancer.weights().values())


@pytest.mark.parametrize("method", BALANCERS.names())
def test_state_round_trips_through_json_into_a_fresh_instance(method):
    original = trained(method)
    state = original.state_dict()
    restored = make_balancer(method, TASKS)
    restored.load_state_dict(json.loads(json.dumps(state, allow_nan=False)))
    assert restored.weights() == original.weights()
    assert restored.state_dict() == state
    # Everything that steers later weights was saved: both continue identically.
    for task, loss, norm in random_reports(seed=2, count=250):
        original.observe(task, loss, norm)
        restored.observe(task, loss, norm)
        assert restored.weights() == original.weights()


@pytest.mark.parametrize("method", BALANCERS.names())
def test_non_finite_reports_leave_state_unchanged(method):
    balancer = trained(method)
    before = json.dumps(balancer.state_dict(), sort_keys=True)
    for task in TASKS:
        for loss, norm in ((math.nan, 1.0), (math.inf, 1.0), (-math.inf, 1.0),
                           (1.0, math.nan), (1.0, math.inf)):
            balancer.observe(task, loss, norm)
    assert json.dumps(balancer.state_dict(), sort_keys=True) == before
