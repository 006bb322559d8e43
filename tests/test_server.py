"""The ParameterServer actor: publishing once per version, and the protocol over Ray."""
from __future__ import annotations

import numpy as np
import pytest
import ray

from ps_trainer.protocol import APPLIED, NONFINITE, QUEUED, STALE, PushStats

pytestmark = pytest.mark.ray
STATS = PushStats(loss=1.0, shared_grad_norm=1.0)


@pytest.fixture
def server(ray_session, tiny_config):
    """(config, spec, server handle) for a single-shard server of rotation + segmentation."""
    from ps_trainer.launch import _runtime_spec

    def make(extra=()):
        cfg = tiny_config(tasks=("rotation", "segmentation"),
                          extra=["optimizer.name=sgd", "optimizer.lr=1.0", "optimizer.momentum=0",
                                 "optimizer.weight_decay=0", *extra])
        spec = _runtime_spec(cfg, None)
        handle = spec.server_cls.options(num_cpus=0.25).remote(cfg, 0, spec.initial_weights[0],
                                                               spec.task_keys)
        made.append(handle)
        return cfg, spec, handle

    made = []
    yield make
    for handle in made:
        ray.kill(handle)


def grads_for(spec, task, value=0.0):
    sizes = {p.key: p.stop - p.start for p in spec.plan}
    return {k: np.full(sizes[k], value, np.float32) for k in spec.task_keys[task]}


def pulled(handle, have=-1):
    version, refs = ray.get(handle.pull.remote(("trunk",), have))
    return version, (ray.get(refs["trunk"]) if refs else None), refs


def test_pull_publishes_once_per_version_and_nothing_when_current(server):
    cfg, spec, handle = server()
    v0, trunk0, refs_a = pulled(handle)
    _, _, refs_b = pulled(handle)
    assert v0 == 0 and refs_a["trunk"] == refs_b["trunk"]     # same object: no re-serialisation
    assert not trunk0.flags.writeable                          # a view of the object store
    assert pulled(handle, have=0)[2] == {}                    # current: nothing to send
    ray.get(handle.push.remote("rotation", 0, 0, grads_for(spec, "rotation", 0.5), STATS))
    v1, trunk1, refs_c = pulled(handle, have=0)
    assert v1 == 1 and refs_c["trunk"] != refs_a["trunk"]
    np.testing.assert_allclose(trunk1, trunk0 - 0.5, rtol=1e-6)


def test_head_of_another_task_is_not_resent(server):
    cfg, spec, handle = server()
    version, refs = ray.get(handle.pull.remote(("trunk", "head/segmentation"), -1))
    ray.get(handle.push.remote("rotation", 0, version, grads_for(spec, "rotation", 1.0), STATS))
    _, refs = ray.get(handle.pull.remote(("trunk", "head/segmentation"), version))
    assert set(refs) == {"trunk"}                              # segmentation's head did not change


def test_stale_push_dropped_over_ray(server):
    cfg, spec, handle = server(extra=["server.staleness_policy=drop", "server.max_staleness=1"])
    for _ in range(3):
        ray.get(handle.push.remote("rotation", 0, ray.get(handle.ping.remote()),
                                   grads_for(spec, "rotation"), STATS))
    before = pulled(handle)[1].copy()
    result = ray.get(handle.push.remote("segmentation", 0, 0, grads_for(spec, "segmentation", 1.0),
                                        STATS))
    assert result.reason == STALE and result.staleness == 3
    np.testing.assert_array_equal(pulled(handle)[1], before)
    assert ray.get(handle.status.remote())["rejected"] == {"segmentation/stale": 1}


def test_nan_push_rejected_counted_weights_unchanged(server):
    cfg, spec, handle = server()
    before = pulled(handle)[1].copy()
    bad = grads_for(spec, "rotation", 1.0)
    bad["trunk"][0] = np.nan
    result = ray.get(handle.push.remote("rotation", 0, 0, bad, STATS))
    assert result.reason == NONFINITE
    status = ray.get(handle.status.remote())
    assert status["version"] == 0 and status["rejected"] == {"rotation/nonfinite": 1}
    np.testing.assert_array_equal(pulled(handle)[1], before)


def test_sync_group_turns_k_pushes_into_one_update(server):
    cfg, spec, handle = server(extra=["tasks.rotation.sync=3"])
    reasons = [ray.get(handle.push.remote("rotation", i, 0, grads_for(spec, "rotation", 1.0),
                                          STATS)).reason for i in range(3)]
    assert reasons == [QUEUED, QUEUED, APPLIED]
    assert ray.get(handle.status.remote())["version"] == 1
