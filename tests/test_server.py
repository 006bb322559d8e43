"""The ParameterServer actor: publishing once per version, and the protocol over Ray."""
from __future__ import annotations

import dataclasses
import os
import signal
import threading

import numpy as np
import pytest
import ray

from ps_trainer.core.protocol import APPLIED, NONFINITE, QUEUED, STALE, PushStats
from ps_trainer.transport.push_buffers import SUPPORTED as SHARED_PUSHES
from ps_trainer.transport.snapshots import SnapshotRound, take_snapshot
from support import wait_for

pytestmark = pytest.mark.ray
STATS = PushStats(loss=1.0, shared_grad_norm=1.0)


@pytest.fixture
def server(ray_session, tiny_config):
    """(config, spec, server handle) for a single-shard server of rotation + segmentation."""
    from ps_trainer.run.launch import _runtime_spec

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
    version, refs, _ = ray.get(handle.pull.remote(("trunk",), have))
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


def test_a_restored_server_fences_off_pushes_computed_on_the_old_actors_weights(ray_session,
                                                                             tiny_config):
    """A server of incarnation 1 (the actors after one restore) refuses, by itself, a push whose
    weights came from incarnation 0 even when its version would pass as fresh; a push on its
    own weights is applied. The refusal is counted like any other."""
    from ps_trainer.core.protocol import FENCED
    from ps_trainer.run.launch import _runtime_spec

    cfg = tiny_config(tasks=("rotation",), extra=["optimizer.name=sgd", "optimizer.lr=1.0",
                                                  "optimizer.momentum=0", "optimizer.weight_decay=0"])
    spec = _runtime_spec(cfg, None)
    handle = spec.server_cls.options(num_cpus=0.25).remote(
        cfg, 0, spec.initial_weights[0], spec.task_keys, None, None, [], 1)
    try:
        version, refs, incarnation = ray.get(handle.pull.remote(("trunk",), -1))
        assert (version, incarnation) == (0, 1)
        before = ray.get(refs["trunk"]).copy()
        old = dataclasses.replace(STATS, incarnation=0)
        result = ray.get(handle.push.remote("rotation", 0, version,
                                            grads_for(spec, "rotation", 1.0), old))
        assert result.reason == FENCED and result.version == 0
        status = ray.get(handle.status.remote())
        assert status.rejected == {f"rotation/{FENCED}": 1} and status.version == 0
        own = dataclasses.replace(STATS, incarnation=1)
        assert ray.get(handle.push.remote("rotation", 0, version, grads_for(spec, "rotation", 1.0),
                                          own)).reason == APPLIED
        _, refs, _ = ray.get(handle.pull.remote(("trunk",), version))
        np.testing.assert_allclose(ray.get(refs["trunk"]), before - 1.0, rtol=1e-6)
    finally:
        ray.kill(handle)


def test_head_of_another_task_is_not_resent(server):
    cfg, spec, handle = server()
    version, refs, _ = ray.get(handle.pull.remote(("trunk", "head/segmentation"), -1))
    ray.get(handle.push.remote("rotation", 0, version, grads_for(spec, "rotation", 1.0), STATS))
    _, refs, _ = ray.get(handle.pull.remote(("trunk", "head/segmentation"), version))
    assert set(refs) == {"trunk"}                              # segmentation's head did not change


def test_stale_push_dropped_over_ray(server):
    cfg, spec, handle = server(extra=["server.staleness_policy=unscaled", "server.max_staleness_updates=1"])
    for _ in range(3):
        ray.get(handle.push.remote("rotation", 0, ray.get(handle.ping.remote()),
                                   grads_for(spec, "rotation"), STATS))
    before = pulled(handle)[1].copy()
    result = ray.get(handle.push.remote("segmentation", 0, 0, grads_for(spec, "segmentation", 1.0),
                                        STATS))
    assert result.reason == STALE and result.staleness == 3
    np.testing.assert_array_equal(pulled(handle)[1], before)
    assert ray.get(handle.status.remote()).rejected == {"segmentation/stale": 1}


def test_nan_push_rejected_counted_weights_unchanged(server):
    cfg, spec, handle = server()
    before = pulled(handle)[1].copy()
    bad = grads_for(spec, "rotation", 1.0)
    bad["trunk"][0] = np.nan
    result = ray.get(handle.push.remote("rotation", 0, 0, bad, STATS))
    assert result.reason == NONFINITE
    status = ray.get(handle.status.remote())
    assert status.version == 0 and status.rejected == {"rotation/nonfinite": 1}
    np.testing.assert_array_equal(pulled(handle)[1], before)


def test_sync_group_turns_k_pushes_into_one_update(server):
    cfg, spec, handle = server(extra=["tasks.rotation.sync=3"])
    reasons = [ray.get(handle.push.remote("rotation", i, 0, grads_for(spec, "rotation", 1.0),
                                          STATS)).reason for i in range(3)]
    assert reasons == [QUEUED, QUEUED, APPLIED]
    assert ray.get(handle.status.remote()).version == 1


def client_pushes(cfg, spec, handle, prefetch: bool, pushes: int = 3, shared_memory=False,
                  value=lambda step: 0.25):
    """One worker's loop (refresh, fill gradients, push) through a real ParameterClient;
    returns the staleness of each push and the weights the client held at the end."""
    from ps_trainer.transport.client import ParameterClient
    from ps_trainer.run.launch import initial_model

    _, flat = initial_model(cfg)
    pieces = tuple(p for p in spec.plan if p.shard in ("trunk", "head/rotation"))
    results = []
    client = ParameterClient([handle], pieces, flat, inflight=2, prefetch=prefetch,
                             shared_memory=shared_memory, on_result=results.append)
    client.connect()
    for step in range(pushes):
        client.refresh()
        for shard in ("trunk", "head/rotation"):
            flat.grads[shard].fill_(value(step))
        client.push("rotation", 0, STATS, shards=("trunk", "head/rotation"))
    client.drain()
    client.refresh()
    assert client.shared_links == int(shared_memory)
    return [r.staleness for r in results], flat


def test_without_prefetch_every_step_starts_from_the_newest_weights(server):
    cfg, spec, handle = server()
    staleness, flat = client_pushes(cfg, spec, handle, prefetch=False)
    # Each pull is ordered after this worker's own pushes, so none of them is stale.
    assert staleness == [0, 0, 0]
    np.testing.assert_array_equal(flat.params["trunk"].numpy(), pulled(handle)[1])
    # With prefetch the second step still uses the weights pulled before the first push.
    cfg, spec, handle = server()
    staleness, _ = client_pushes(cfg, spec, handle, prefetch=True)
    assert staleness[0] == 0 and staleness[1] == 1


@pytest.mark.skipif(not SHARED_PUSHES, reason="shared-memory pushes need Linux")
def test_same_node_pushes_are_read_from_the_workers_memory(server):
    """Twenty pushes of different gradients through shared memory, two in flight, land exactly
    as through the object store. The client fills the next region while the server still reads
    the last two: a region reused too early would hand the server a later step's gradient."""
    weights = {}
    for shared in (False, True):
        cfg, spec, handle = server(extra=["server.staleness_policy=unscaled"])
        initial = pulled(handle)[1].copy()
        client_pushes(cfg, spec, handle, prefetch=True, pushes=20,
                                     shared_memory=shared, value=lambda step: 0.25 * (step + 1))
        weights[shared] = pulled(handle)[1]
        assert ray.get(handle.status.remote()).push_buffers == int(shared)
    assert ray.get(handle.status.remote()).applied == {"rotation": 20, "segmentation": 0}
    np.testing.assert_array_equal(weights[True], weights[False])
    # lr 1, plain SGD, full steps: the weights moved by the sum of the gradients.
    np.testing.assert_allclose(weights[True], initial - 0.25 * sum(range(1, 21)), rtol=1e-6)


# --------------------------------------------------------------------------- a split model

@pytest.fixture
def split(ray_session, tiny_config):
    """A model split over two server actors, and a real ParameterClient pushing to it."""
    from ps_trainer.transport.client import ParameterClient
    from ps_trainer.run.launch import _runtime_spec, initial_model

    def make(extra=(), shared_memory=False, inflight=1):
        cfg = tiny_config(tasks=("rotation", "segmentation"),
                          extra=["server.actors=2", "optimizer.name=sgd", "optimizer.lr=1.0",
                                 "optimizer.momentum=0", "optimizer.weight_decay=0", *extra])
        spec = _runtime_spec(cfg, None)
        make_server = lambda i, peers=(): spec.server_cls.options(num_cpus=0.25).remote(  # noqa: E731
            cfg, i, spec.initial_weights[i], spec.task_keys, None, None, list(peers))
        second = make_server(1)
        servers = [make_server(0, [second]), second]
        made.extend(servers)
        _, flat = initial_model(cfg)
        pieces = tuple(p for p in spec.plan if p.shard in ("trunk", "head/rotation"))
        client = ParameterClient(servers, pieces, flat, inflight=inflight,
                                 shared_memory=shared_memory)
        client.connect()
        return cfg, spec, servers, client, flat

    made = []
    yield make
    for handle in made:
        ray.kill(handle)


def weights_of(servers) -> list[dict]:
    return [ray.get(s.state.remote())["weights"] for s in servers]


def caught_up(servers, version):
    """Wait until every server actor is at `version`: actor 0 sends its decisions to the
    others without waiting, so they arrive in no fixed order with the test's own calls."""
    return wait_for(lambda: [ray.get(s.ping.remote()) for s in servers] == [version] * len(servers),
                    what=f"every server actor at version {version}")


def push_and_wait(client, flat, value, stats=STATS):
    for shard in ("trunk", "head/rotation"):
        flat.grads[shard].fill_(value)
    client.push("rotation", 0, stats, shards=("trunk", "head/rotation"))
    results = []
    client.on_result = results.append
    client.drain()
    return results[0]


def test_a_split_push_with_nan_in_one_actors_part_is_applied_by_none(split):
    cfg, spec, servers, client, flat = split()
    before = weights_of(servers)
    for shard in ("trunk", "head/rotation"):
        flat.grads[shard].fill_(1.0)
    second = next(p for p in spec.plan if p.server == 1 and p.shard == "trunk")
    flat.grads["trunk"][second.start] = float("nan")          # only actor 1's part is bad
    client.push("rotation", 0, STATS, shards=("trunk", "head/rotation"))
    results = []
    client.on_result = results.append
    client.drain()
    assert [r.reason for r in results] == [NONFINITE]
    for old, new in zip(before, weights_of(servers)):
        for key in old:
            np.testing.assert_array_equal(new[key], old[key])
    assert [ray.get(s.ping.remote()) for s in servers] == [0, 0]


def test_a_split_push_is_clipped_by_the_norm_of_the_whole_push(split):
    cfg, spec, servers, client, flat = split(extra=["optimizer.clip_grad_norm=1.0"])
    before = weights_of(servers)
    total = sum(flat.grads[s].numel() for s in ("trunk", "head/rotation"))
    result = push_and_wait(client, flat, 0.5)
    assert result.reason == APPLIED
    caught_up(servers, 1)                 # actor 1 applies the decision when it arrives
    expected_step = 0.5 / (0.5 * np.sqrt(total))        # lr 1 x g x clip / ||g||: the same everywhere
    for old, new in zip(before, weights_of(servers)):
        for key in old:
            moved = old[key] - new[key]
            if key in spec.task_keys["rotation"]:
                np.testing.assert_allclose(moved, expected_step, rtol=1e-4)
            else:
                np.testing.assert_array_equal(moved, 0)


def test_split_actors_take_one_staleness_decision_and_snapshot_one_point(split):
    cfg, spec, servers, client, flat = split(extra=["server.staleness_policy=unscaled",
                                                    "server.max_staleness_updates=1"])
    for _ in range(3):
        client.connect()                      # a blocking pull: the newest weights
        assert push_and_wait(client, flat, 0.01).reason == APPLIED
    for link in client.links:                 # the worker's weights are from version 0 again
        link.version = 0
    assert push_and_wait(client, flat, 1.0).reason == STALE
    caught_up(servers, 3)
    states = take_snapshot(servers, "test", timeout_s=60)
    assert [s["version"] for s in states] == [3, 3]
    for state, now in zip(states, weights_of(servers)):
        for key in now:
            np.testing.assert_array_equal(state["weights"][key], now[key])


def test_snapshots_taken_while_pushes_go_on_find_every_actor_at_one_version(split):
    """Pushes keep arriving (from a thread) while snapshots are taken: each actor copies its
    state after exactly the decisions actor 0 made before the round, so every round's parts
    are at one version, and the parts are the taker's own objects, one per actor."""
    cfg, spec, servers, client, flat = split(inflight=2)
    done = threading.Event()

    def pushing():
        while not done.is_set():
            for shard in ("trunk", "head/rotation"):
                flat.grads[shard].fill_(0.001)
            client.push("rotation", 0, STATS, shards=("trunk", "head/rotation"))
            client.refresh()

    thread = threading.Thread(target=pushing, daemon=True)
    thread.start()
    try:
        versions = []
        for _ in range(8):
            snapshot = SnapshotRound(servers, "test")
            while not snapshot.poll():
                snapshot.wait(60)
            states = ray.get(snapshot.state_refs, timeout=60)
            assert len(snapshot.state_refs) == 2 and snapshot.nbytes > 0
            assert {s["version"] for s in states} == {snapshot.version}
            versions.append(snapshot.version)
    finally:
        done.set()
        thread.join(timeout=60)
    assert versions[-1] > versions[0]        # the pushes went on between the rounds


def test_a_paused_actor_does_not_hold_up_actor_0_during_a_snapshot(split):
    """Actor 0 hands out its own state and sends the others their hold without waiting for
    them: with actor 1 stopped (SIGSTOP), actor 0 still answers at once; once actor 1 goes on
    (SIGCONT) it hands its part over, at actor 0's version."""
    cfg, spec, servers, client, flat = split()
    assert push_and_wait(client, flat, 0.01).reason == APPLIED
    caught_up(servers, 1)
    pid = ray.get(servers[1].process.remote())["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        snapshot = SnapshotRound(servers, "test")
        first = ray.get(snapshot.state_refs[0], timeout=30)
        assert first["version"] == 1
        assert ray.get(servers[0].ping.remote(), timeout=30) == 1
        assert not snapshot.poll()
    finally:
        os.kill(pid, signal.SIGCONT)
    while not snapshot.poll():
        snapshot.wait(60)
    assert [s["version"] for s in snapshot.summaries] == [1, 1]


def test_a_held_state_is_handed_over_once_and_only_for_its_round(split):
    cfg, spec, servers, client, flat = split()
    peer = servers[1]
    assert ray.get(peer.held_snapshot.options(num_returns=2).remote("test", "a")[0]) is None
    ray.get(peer.hold_snapshot.remote("test", "a"))
    assert ray.get(peer.held_snapshot.options(num_returns=2).remote("test", "b")[0]) is None
    summary, state = peer.held_snapshot.options(num_returns=2).remote("test", "a")
    assert ray.get(summary)["version"] == ray.get(state)["version"] == 0
    assert ray.get(peer.held_snapshot.options(num_returns=2).remote("test", "a")[0]) is None


def test_split_sync_groups_close_together(split):
    cfg, spec, servers, client, flat = split(extra=["tasks.rotation.sync=2"])
    assert [push_and_wait(client, flat, 0.01).reason for _ in range(4)] == \
        [QUEUED, APPLIED, QUEUED, APPLIED]
    caught_up(servers, 2)


def test_parts_never_decided_are_let_go(split):
    cfg, spec, servers, client, flat = split(extra=["server.max_staleness_updates=2"])
    second = [p for p in spec.plan if p.server == 1 and p.shard == "trunk"]
    orphan = {p.key: np.zeros(p.stop - p.start, np.float32) for p in second}
    ray.get(servers[1].stage.remote(12345, "rotation", 0, orphan, STATS))   # its worker died
    assert ray.get(servers[1].status.remote()).staged == 1
    for version in range(1, 5):
        client.connect()                      # a blocking pull: the newest weights
        assert push_and_wait(client, flat, 0.01).reason == APPLIED
        caught_up(servers, version)           # the next part is staged at this version
    assert ray.get(servers[1].status.remote()).staged == 0
    assert ray.get(servers[1].status.remote()).lost_parts == 0


@pytest.mark.skipif(not SHARED_PUSHES, reason="shared-memory pushes need Linux")
def test_a_split_model_reads_same_node_pushes_from_shared_memory(split):
    """Both actors map the worker's buffer; actor 1 copies its staged part (the worker may
    reuse the region before actor 0's decision reaches it). Ten pushes of different gradients,
    two in flight, land exactly; a NaN in actor 1's part is still applied by neither."""
    cfg, spec, servers, client, flat = split(extra=["server.staleness_policy=unscaled"],
                                             shared_memory=True, inflight=2)
    before = weights_of(servers)
    for step in range(10):
        for shard in ("trunk", "head/rotation"):
            flat.grads[shard].fill_(0.25 * (step + 1))
        client.push("rotation", 0, STATS, shards=("trunk", "head/rotation"))
    client.drain()
    assert client.shared_links == 2
    caught_up(servers, 10)
    assert [ray.get(s.status.remote()).push_buffers for s in servers] == [1, 1]
    for old, new in zip(before, weights_of(servers)):
        for key in old:
            pushed = key.startswith("trunk") or key == "head/rotation"
            np.testing.assert_allclose(new[key], old[key] - (0.25 * 55 if pushed else 0.0),
                                       rtol=1e-6)
    second = next(p for p in spec.plan if p.server == 1 and p.shard == "trunk")
    for shard in ("trunk", "head/rotation"):
        flat.grads[shard].fill_(1.0)
    flat.grads["trunk"][second.start] = float("nan")
    results = []
    client.on_result = results.append
    client.push("rotation", 0, STATS, shards=("trunk", "head/rotation"))
    client.drain()
    assert [r.reason for r in results] == [NONFINITE]
    assert [ray.get(s.ping.remote()) for s in servers] == [10, 10]


def test_a_sync_group_that_went_stale_is_counted_as_rejected(server):
    """rotation's group of 2 holds a push at version 0; two segmentation updates later its
    oldest push is too stale: the group is dropped, and that shows in the server's counts."""
    cfg, spec, handle = server(extra=["tasks.rotation.sync=2", "server.max_staleness_updates=1",
                                      "server.staleness_policy=unscaled"])
    assert ray.get(handle.push.remote("rotation", 0, 0, grads_for(spec, "rotation", 1.0),
                                      STATS)).reason == QUEUED
    for base in (0, 1):
        ray.get(handle.push.remote("segmentation", 0, base, grads_for(spec, "segmentation", 1.0),
                                   STATS))
    ray.get(handle.push.remote("rotation", 1, 2, grads_for(spec, "rotation", 1.0), STATS))
    status = ray.get(handle.status.remote())
    assert status.rejected.get("rotation/stale_group") == 1
    assert status.applied.get("rotation", 0) == 0
