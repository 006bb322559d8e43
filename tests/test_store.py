"""ParameterStore: staleness policy, sync groups, NaN rejection, balancing, state."""
from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch

from ps_trainer.core.balancing import make_balancer
from ps_trainer.config import OptimizerConfig, ServerConfig
from ps_trainer.core.protocol import APPLIED, FENCED, NONFINITE, QUEUED, STALE, PushStats
from ps_trainer.core.store import ParameterStore

SGD = OptimizerConfig(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, schedule="constant")
STATS = PushStats(loss=1.0, shared_grad_norm=1.0)


def make_store(policy="scale", max_staleness_updates=8, sync=None, balancing="equal", options=None,
               optimizer=SGD, verify=True):
    weights = {"trunk": torch.zeros(4), "head/a": torch.zeros(2), "head/b": torch.zeros(3)}
    keys = {"a": ("trunk", "head/a"), "b": ("trunk", "head/b")}
    return ParameterStore(weights, keys, optimizer,
                          ServerConfig(staleness_policy=policy, max_staleness_updates=max_staleness_updates,
                                       verify_gradients=verify),
                          make_balancer(balancing, ("a", "b"), options), sync or {}, 100)


def grads(task, value=1.0):
    return {"trunk": np.full(4, value, np.float32),
            f"head/{task}": np.full(2 if task == "a" else 3, value, np.float32)}


def test_fresh_push_applies_one_sgd_step_to_its_pieces_only():
    store = make_store()
    result = store.push("a", 0, grads("a", 0.5), STATS)
    assert (result.reason, result.version, result.staleness) == (APPLIED, 1, 0)
    np.testing.assert_allclose(store.weights["trunk"].numpy(), -0.5)
    np.testing.assert_allclose(store.weights["head/a"].numpy(), -0.5)
    np.testing.assert_allclose(store.weights["head/b"].numpy(), 0.0)


def test_scale_policy_divides_by_one_plus_staleness():
    store = make_store(policy="scale")
    for _ in range(3):
        store.push("a", store.version, grads("a", 0.0), STATS)
    result = store.push("b", 0, grads("b", 1.0), STATS)        # 3 versions behind
    assert result.staleness == 3 and result.reason == APPLIED
    np.testing.assert_allclose(store.weights["head/b"].numpy(), -1.0 / 4)


def test_pushes_above_max_staleness_are_dropped_and_keep_the_weights():
    store = make_store(policy="unscaled", max_staleness_updates=2)
    for _ in range(3):
        store.push("a", store.version, grads("a", 0.0), STATS)
    before = store.weights["trunk"].clone()
    result = store.push("b", 0, grads("b", 1.0), STATS)
    assert result.reason == STALE and result.staleness == 3 and not result.accepted
    assert torch.equal(store.weights["trunk"], before) and store.version == 3
    ok = store.push("b", 1, grads("b", 1.0), STATS)           # staleness 2: at the limit, full step
    assert ok.reason == APPLIED
    np.testing.assert_allclose(store.weights["head/b"].numpy(), -1.0)


def test_push_from_before_a_restore_is_dropped():
    store = make_store()
    assert store.push("a", 5, grads("a"), STATS).reason == STALE


def test_a_push_of_another_server_incarnation_is_fenced_whatever_its_version():
    """After a restore the versions repeat the old actors' (restored to a snapshot's): a push
    computed on the old weights may carry a version that looks fresh. The incarnation tells."""
    store = make_store()
    store.incarnation = 1                        # the actors after one restore
    before = store.weights["trunk"].clone()
    result = store.push("a", store.version, grads("a"), STATS)          # incarnation 0
    assert result.reason == FENCED and not result.accepted and store.version == 0
    assert torch.equal(store.weights["trunk"], before)
    own = dataclasses.replace(STATS, incarnation=1)
    assert store.push("a", store.version, grads("a"), own).reason == APPLIED


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_or_loss_is_rejected_and_changes_nothing(bad):
    store = make_store()
    g = grads("a")
    g["trunk"][2] = bad
    before = {k: t.clone() for k, t in store.weights.items()}
    assert store.push("a", 0, g, STATS).reason == NONFINITE
    assert store.push("a", 0, grads("a"), PushStats(loss=bad, shared_grad_norm=1.0)).reason == NONFINITE
    assert store.version == 0
    for k, t in store.weights.items():
        assert torch.equal(t, before[k])


def test_without_verification_the_reported_norm_decides():
    """server.verify_gradients off: the server skips its pass and trusts the client's norm."""
    store = make_store(verify=False)
    bad = grads("a")
    bad["trunk"][0] = np.nan
    nan_report = PushStats(loss=1.0, shared_grad_norm=1.0, grad_norm=float("nan"))
    assert store.push("a", 0, bad, nan_report).reason == NONFINITE
    assert store.push("a", 0, grads("a"), PushStats(1.0, 1.0, grad_norm=3.0)).reason == APPLIED
    # without a report it verifies anyway (the local trainer sends none)
    assert store.push("a", 1, bad, STATS).reason == NONFINITE


def test_sync_group_averages_k_pushes_into_one_update():
    store = make_store(sync={"a": 3})
    results = [store.push("a", 0, grads("a", v), STATS) for v in (1.0, 2.0, 6.0)]
    assert [r.reason for r in results] == [QUEUED, QUEUED, APPLIED]
    assert store.version == 1
    np.testing.assert_allclose(store.weights["head/a"].numpy(), -3.0)   # mean of 1, 2, 6
    # other tasks stay asynchronous while a group fills
    store.push("a", 1, grads("a"), STATS)
    assert store.push("b", 1, grads("b"), STATS).reason == APPLIED and store.version == 2


def test_balancing_weight_scales_the_step():
    store = make_store(balancing="static", options={"weights": {"a": 0.25}})
    store.push("a", 0, grads("a", 1.0), STATS)
    np.testing.assert_allclose(store.weights["head/a"].numpy(), -0.25)


def test_clip_grad_norm_bounds_the_step():
    store = make_store(optimizer=OptimizerConfig(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.0,
                                                 schedule="constant", clip_grad_norm=1.0))
    store.push("a", 0, grads("a", 3.0), STATS)                 # norm 3*sqrt(6)
    step = np.concatenate([store.weights["trunk"].numpy(), store.weights["head/a"].numpy()])
    assert np.linalg.norm(step) == pytest.approx(1.0, rel=1e-5)


def test_wrong_shape_and_unknown_task_raise_with_names():
    store = make_store()
    with pytest.raises(ValueError, match="head/a"):
        store.push("a", 0, {"trunk": np.zeros(4, np.float32), "head/a": np.zeros(5, np.float32)}, STATS)
    with pytest.raises(KeyError, match="'c'"):
        store.push("c", 0, grads("a"), STATS)


def test_state_round_trip_restores_weights_optimizer_balancer_and_version():
    store = make_store(optimizer=OptimizerConfig(name="adamw", schedule="constant"),
                       balancing="uncertainty")
    for v in range(5):
        store.push("a" if v % 2 else "b", store.version, grads("a" if v % 2 else "b", v + 1.0),
                   PushStats(loss=2.0 + v, shared_grad_norm=1.0))
    state = store.state()
    fresh = make_store(optimizer=OptimizerConfig(name="adamw", schedule="constant"),
                       balancing="uncertainty")
    fresh.load_state(state)
    assert fresh.version == 5
    assert fresh.balancer.weights() == store.balancer.weights()
    for key in store.weights:
        assert torch.equal(fresh.weights[key], store.weights[key])
    # both continue identically
    for s in (store, fresh):
        s.push("a", 5, grads("a", 0.3), STATS)
    for key in store.weights:
        assert torch.equal(fresh.weights[key], store.weights[key])
    state["weights"]["trunk"][:] = 99        # the state is a copy
    assert not math.isclose(float(store.weights["trunk"][0]), 99.0)


def test_state_restores_from_read_only_arrays_without_warning():
    """A state fetched from Ray's object store is read-only; restoring it must neither warn
    nor write to it."""
    store = make_store()
    store.push("a", 0, grads("a", 2.0), STATS)
    state = store.state()
    for array in state["weights"].values():
        array.flags.writeable = False
    fresh = make_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.load_state(state)
    for key in store.weights:
        assert torch.equal(fresh.weights[key], store.weights[key])


ADAM = OptimizerConfig(name="adamw", lr=0.01, weight_decay=0.0, schedule="constant")


def _head_a_travel(weight: float, pushes: int = 50) -> float:
    """How far head/a moves under Adam after `pushes` identical pushes at a static weight."""
    store = make_store(balancing="static", options={"weights": {"a": weight}}, optimizer=ADAM)
    rng = np.random.default_rng(0)
    for _ in range(pushes):
        g = grads("a")
        g["head/a"] = rng.normal(size=2).astype(np.float32) + 1.0
        store.push("a", store.version, g, STATS)
    return float(np.abs(store.weights["head/a"].numpy()).sum())


def test_balancing_weight_scales_the_step_under_adam():
    """Adam normalises a constant gradient scale away; the weight must act on the step."""
    ratio = _head_a_travel(1.0) / _head_a_travel(0.01)
    assert ratio == pytest.approx(100.0, rel=0.02)


@pytest.mark.parametrize("optimizer", ["adamw", "rmsprop", "sgd"])
def test_scale_policy_halves_the_step_at_staleness_one(optimizer):
    cfg = OptimizerConfig(name=optimizer, lr=0.01, momentum=0.0, weight_decay=0.0,
                          schedule="constant")
    moved = []
    for base in (1, 0):                                  # staleness 0, then 1
        store = make_store(policy="scale", optimizer=cfg)
        store.push("b", 0, grads("b"), STATS)            # version 1; head/a untouched
        result = store.push("a", base, grads("a", 2.0), STATS)
        assert result.staleness == 1 - base
        moved.append(float(np.abs(store.weights["head/a"].numpy()).sum()))
    assert moved[1] / moved[0] == pytest.approx(0.5, rel=1e-5)


def test_sync_group_whose_oldest_push_went_stale_is_dropped():
    store = make_store(policy="unscaled", max_staleness_updates=8, sync={"a": 2})
    assert store.push("a", 0, grads("a"), STATS).reason == QUEUED          # made at version 0
    for _ in range(50):
        store.push("b", store.version, grads("b", 0.0), STATS)
    result = store.push("a", store.version, grads("a"), STATS)
    assert result.reason == QUEUED and store.dropped_in_groups == 1       # the old one is gone
    np.testing.assert_allclose(store.weights["head/a"].numpy(), 0.0)
    assert store.push("a", store.version, grads("a"), STATS).reason == APPLIED
    np.testing.assert_allclose(store.weights["head/a"].numpy(), -1.0)    # mean of the fresh two


def test_norm_statistics_are_kept_per_task_and_the_latest_accepted_push_wins():
    """Several workers of one task each push their own running statistics: the store keeps
    the newest accepted ones per task (those computed with the freshest weights); a rejected
    push's statistics are not kept; tasks never overwrite each other's."""
    store = make_store(max_staleness_updates=1)
    store.push("a", 0, grads("a"), STATS, {"trunk": np.full(3, 1.0, np.float32)})   # worker 0
    store.push("a", 1, grads("a"), STATS, {"trunk": np.full(3, 2.0, np.float32)})   # worker 1
    store.push("b", 2, grads("b"), STATS, {"trunk": np.full(3, 9.0, np.float32)})
    stale = store.push("a", 0, grads("a"), STATS, {"trunk": np.full(3, 5.0, np.float32)})
    assert stale.reason == STALE
    np.testing.assert_array_equal(store.norm_stats["a"]["trunk"], np.full(3, 2.0))
    np.testing.assert_array_equal(store.norm_stats["b"]["trunk"], np.full(3, 9.0))
