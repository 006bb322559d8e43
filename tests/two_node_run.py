"""Run by tests/test_two_nodes.py in its own process: a two-node local cluster
(ray.cluster_utils.Cluster) with the parameter server on one node and the workers on the other."""
from __future__ import annotations

import json
import sys

import ray
from ray.cluster_utils import Cluster

from ps_trainer.run.launch import load_run_config, run_distributed


def main(out_dir: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"workers_here": 1}})
    cluster.add_node(num_cpus=1, resources={"server_here": 1})
    ray.init(address=cluster.address, logging_level="WARNING")
    try:
        overrides = [
            f"run.out_dir={out_dir}", "run.max_updates=60", "run.max_minutes=3",
            "data.image_size=32", "data.labelled=4", "data.unlabelled=32", "data.val=8",
            "model.widths=[8,16]", "model.blocks=[1,1]", "eval.every_s=2", "eval.num_cpus=0.1",
            "metrics.port=0", "server.num_cpus=0.5", "server.resources.server_here=1"]
        for task in ("rotation", "segmentation"):
            overrides += [f"tasks.{task}.workers=1", f"tasks.{task}.batch_size=4",
                          f"tasks.{task}.num_cpus=0.3", f"tasks.{task}.resources.workers_here=0.1"]
        summary = run_distributed(load_run_config(None, overrides))
        nodes = {"server": summary.runtime.servers[0].node,
                 "head": ray.get_runtime_context().get_node_id()}
        print("RESULT " + json.dumps({"nodes": nodes, "version": summary.updates,
                                      "miou": summary.miou,
                                      "applied": summary.applied}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
