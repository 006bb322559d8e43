"""Run by tests/test_two_nodes.py inside the head's network namespace: a run whose server actor
is on the other node (its own namespace, reached through a veth pair), and a cut of that link
for a few seconds while it trains. Prints one RESULT line of JSON."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import ray

from ps_trainer.run.launch import load_run_config, start_coordinator

CUT_S = 8.0          # shorter than Ray takes to declare a node dead (about 15 s of failed checks)


def _wait(what: str, test, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not test():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} in {timeout_s:.0f} s")
        time.sleep(0.2)


def _link(namespace: str, device: str, state: str) -> None:
    subprocess.run(["ip", "-n", namespace, "link", "set", device, state], check=True)


def main(address: str, out_dir: str, peer_namespace: str, peer_device: str) -> None:
    ray.init(address=address, logging_level="WARNING")
    overrides = [
        f"run.out_dir={out_dir}", "run.max_updates=100000", "run.max_minutes=6",
        "data.image_size=32", "data.labelled=4", "data.unlabelled=32", "data.val=8",
        "model.widths=[8,16]", "model.blocks=[1,1]", "eval.every_s=5", "eval.num_cpus=0.1",
        "metrics.enabled=false", "server.num_cpus=0.5", "server.resources.server_here=1"]
    for task in ("rotation", "segmentation"):
        overrides += [f"tasks.{task}.workers=1", f"tasks.{task}.batch_size=4",
                      f"tasks.{task}.num_cpus=0.3", f"tasks.{task}.resources.workers_here=0.1"]
    cfg = load_run_config(None, overrides)
    coordinator = start_coordinator(cfg)
    done = coordinator.run.remote()

    def status():
        return ray.get(coordinator.status.remote(), timeout=30)

    def retried() -> int:
        workers = ray.get(coordinator.handles.remote(), timeout=30)["workers"]
        answers = ray.get([w.status.remote() for ws in workers.values() for w in ws], timeout=60)
        return sum(a.results.get("retried", 0) for a in answers)

    try:
        _wait("training", lambda: (status().version or 0) >= 30, 180)
        before = status()
        server_node = before.servers[0].node
        server = ray.get(coordinator.handles.remote(), timeout=30)["servers"][0]
        _link(peer_namespace, peer_device, "down")
        cut_at = time.monotonic()
        try:
            try:                                   # the cut is real: the server is out of reach
                ray.get(server.ping.remote(), timeout=CUT_S / 2)
                reachable_during_cut = True
            except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
                reachable_during_cut = False
            time.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))   # down this long in all
        finally:
            _link(peer_namespace, peer_device, "up")
        _wait("training after the cut", lambda: (status().version or 0) >= before.version + 60,
              240)
        after = status()
        result = {"server_node": server_node, "driver_node": ray.get_runtime_context().get_node_id(),
                  "before": before.version, "after": after.version,
                  "restarts": after.restarts, "restores": after.restores,
                  "server_node_after": after.servers[0].node, "retried": retried(),
                  "reachable_during_cut": reachable_during_cut,
                  "same_server_answers": ray.get(server.ping.remote(), timeout=30) >= after.version}
        coordinator.stop.remote()
        summary = ray.get(done, timeout=180)
        result["final_version"] = summary.updates
        result["miou"] = summary.miou
        print("RESULT " + json.dumps(result), flush=True)
    finally:
        ray.kill(coordinator)
        ray.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:5])
