import math

import pytest

from ps_trainer.core.balancing import make_balancer
from ps_trainer.core.balancing.uncertainty import Uncertainty, UncertaintyOptions
from ps_trainer.config.options import ConfigError


def test_starts_at_half_weight_from_zero_log_variance():
    balancer = make_balancer("uncertainty", ("a", "b"))
    # s = 0 -> 1 / (2 exp(0))
    assert balancer.weights() == {"a": 0.5, "b": 0.5}


def test_one_step_matches_hand_computation():
    balancer = Uncertainty(("a", "b"), UncertaintyOptions(lr=0.1))
    balancer.observe("a", 3.0, 1.0)
    # ds = 1/2 - 3/2 = -1, so s = 0 - 0.1 * (-1) = 0.1 and the weight is exp(-0.1) / 2.
    assert balancer.log_variance["a"] == pytest.approx(0.1)
    assert balancer.weight("a") == pytest.approx(0.45241870901797976)
    assert balancer.weight("b") == 0.5  # only the reporting task moves


def test_log_variance_converges_to_log_loss():
    balancer = Uncertainty(("a",), UncertaintyOptions(lr=0.01))
    for _ in range(4000):
        balancer.observe("a", 4.0, 1.0)
    # The fixed point of s - lr (1/2 - L exp(-s) / 2) is exp(s) = L.
    assert balancer.log_variance["a"] == pytest.approx(math.log(4.0), abs=1e-4)
    assert balancer.weight("a") == pytest.approx(1 / 8, rel=1e-4)


def test_ten_times_larger_loss_gets_ten_times_smaller_weight():
    balancer = make_balancer("uncertainty", ("small", "large"))
    for _ in range(5000):
        balancer.observe("small", 0.3, 1.0)
        balancer.observe("large", 3.0, 1.0)
    assert balancer.weight("small") / balancer.weight("large") == pytest.approx(10.0, rel=1e-3)


def test_absurd_losses_keep_the_weight_finite_and_recoverable():
    balancer = Uncertainty(("a",), UncertaintyOptions(lr=0.5, log_variance_limit=20.0))
    balancer.observe("a", 1e300, 1.0)
    assert balancer.log_variance["a"] == 20.0
    balancer.observe("a", -1e300, 1.0)
    assert balancer.log_variance["a"] == -20.0
    assert 0 < balancer.weight("a") < math.inf


def test_non_finite_loss_is_ignored():
    balancer = make_balancer("uncertainty", ("a",))
    balancer.observe("a", 2.0, 1.0)
    before = balancer.state_dict()
    for bad in (math.nan, math.inf, -math.inf):
        balancer.observe("a", bad, 1.0)
    assert balancer.state_dict() == before


@pytest.mark.parametrize("options", [{"lr": 0.0}, {"log_variance_limit": -1.0},
                                     {"init": 30.0}])
def test_bad_options_are_rejected(options):
    with pytest.raises(ConfigError):
        make_balancer("uncertainty", ("a",), options)
