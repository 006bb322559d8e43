import math
import random

import pytest

from ps_trainer.core.balancing import make_balancer
from ps_trainer.core.balancing.gradnorm import GradNorm, GradNormOptions
from ps_trainer.config.options import ConfigError


def reference_gradnorm(reports, tasks, alpha, lr, decay, n_initial, min_weight):
    """Weights after each report, written out plainly from Chen et al. (2018), eqs. 1-2."""
    k = len(tasks)
    w, g, loss_avg = [1.0] * k, [0.0] * k, [0.0] * k
    seen = [[] for _ in range(k)]                      # every loss, to take L(0) from
    history = []
    for task, loss, norm in reports:
        i = tasks.index(task)
        first = not seen[i]
        g[i] = norm if first else decay * g[i] + (1 - decay) * norm
        loss_avg[i] = loss if first else decay * loss_avg[i] + (1 - decay) * loss
        seen[i].append(loss)
        ready = [j for j in range(k) if len(seen[j]) >= n_initial]
        if i in ready:
            l0 = {j: sum(seen[j][:n_initial]) / n_initial for j in ready}
            ratios = {j: loss_avg[j] / l0[j] for j in ready}
            r_i = ratios[i] / (sum(ratios.values()) / len(ready))
            target = sum(w[j] * g[j] for j in ready) / len(ready) * r_i ** alpha
            diff = w[i] * g[i] - target
            w[i] -= lr * g[i] * (1 if diff > 0 else -1 if diff < 0 else 0)
            w[i] = max(w[i], min_weight)
            total = sum(w[j] for j in ready)
            for j in ready:
                w[j] *= len(ready) / total
        history.append(dict(zip(tasks, w)))
    return history


def test_matches_reference_on_random_reports():
    rng = random.Random(0)
    tasks = ("a", "b", "c")
    reports = [(rng.choice(tasks), rng.uniform(0.1, 3.0), rng.uniform(0.0, 5.0))
               for _ in range(400)]
    options = dict(alpha=1.5, lr=0.02, decay=0.8, n_initial=3, min_weight=0.05)
    expected = reference_gradnorm(reports, tasks, **options)
    balancer = GradNorm(tasks, GradNormOptions(
        alpha=1.5, lr=0.02, average_decay=0.8, initial_loss_reports=3, min_weight=0.05))
    for (task, loss, norm), want in zip(reports, expected):
        balancer.observe(task, loss, norm)
        assert balancer.weights() == pytest.approx(want, rel=1e-9)


def test_ten_times_larger_gradients_are_weighted_down_to_equal_weighted_norms():
    balancer = make_balancer("gradnorm", ("big", "small"), {"lr": 0.001})
    for _ in range(4000):
        balancer.observe("big", 1.0, 10.0)
        balancer.observe("small", 1.0, 1.0)
    w = balancer.weights()
    # Equal weighted norms with w summing to 2: 10 w_big = w_small -> w_big = 2/11.
    assert w["big"] == pytest.approx(2 / 11, rel=0.1)
    assert w["small"] == pytest.approx(20 / 11, rel=0.02)
    assert 10 * w["big"] == pytest.approx(w["small"], rel=0.15)


def test_task_whose_loss_falls_slower_gets_more_weight():
    balancer = make_balancer("gradnorm", ("slow", "fast"), {"lr": 0.001})
    for step in range(2000):
        balancer.observe("slow", 2.0 * 0.9999 ** step, 1.0)
        balancer.observe("fast", 2.0 * 0.999 ** step, 1.0)
    w = balancer.weights()
    assert w["slow"] > 1.2 > 0.8 > w["fast"]


def test_weights_sum_to_task_count_and_unreported_tasks_weigh_one():
    balancer = make_balancer("gradnorm", ("a", "b", "c", "d"), {"lr": 0.05})
    rng = random.Random(1)
    for _ in range(300):
        balancer.observe(rng.choice("ab"), rng.uniform(0.1, 2.0), rng.uniform(0.1, 4.0))
        assert sum(balancer.weights().values()) == pytest.approx(4.0)
        assert balancer.weight("c") == balancer.weight("d") == 1.0
    assert balancer.weight("a") != pytest.approx(1.0)


def test_unusable_reports_are_ignored():
    balancer = make_balancer("gradnorm", ("a", "b"))
    balancer.observe("a", 1.0, 2.0)
    balancer.observe("b", 1.0, 1.0)
    before = balancer.state_dict()
    for loss, norm in ((math.nan, 1.0), (1.0, math.inf), (0.0, 1.0), (-1.0, 1.0), (1.0, -1.0)):
        balancer.observe("a", loss, norm)
    assert balancer.state_dict() == before


@pytest.mark.parametrize("options", [{"lr": 0.0}, {"average_decay": 1.0},
                                     {"initial_loss_reports": 0}, {"min_weight": 0.0},
                                     {"alpha": -1.0}])
def test_bad_options_are_rejected(options):
    with pytest.raises(ConfigError):
        make_balancer("gradnorm", ("a",), options)
