"""Train on a Ray cluster started with ``ray up``: the script ``ray submit`` runs on the head node.

    ray up deploy/cluster-local.yaml
    ray submit deploy/cluster-local.yaml deploy/train.py -- --config configs/quickstart.yaml
    ray submit --tmux deploy/cluster-local.yaml deploy/train.py -- \\
        --config configs/quickstart.yaml --set metrics.host=0.0.0.0
    ray submit deploy/cluster-local.yaml deploy/train.py -- --resume runs/quickstart
    ray exec deploy/cluster-local.yaml "ps-trainer scale --task rotation --workers 3"
    ray exec deploy/cluster-local.yaml "ps-trainer status"

Everything after ``--`` is a ``ps-trainer train`` argument (``python deploy/train.py --help``
lists them); ``--address auto`` is added so the driver joins the running cluster (an
``--address`` given after ``--`` wins). ``ray submit`` copies this file to ``~/train.py`` on the
head and runs it there, so the driver, the metrics endpoint and the run folder are on the head.

When ``PS_TRAINER_DIR`` is set (the cluster files set it to the project checkout on every node
and start Ray from there), the script changes into it first: relative paths in the arguments and
the run config (``--config``, ``run.out_dir``, ``data.root``) then resolve against the checkout,
for the driver and the actors alike.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    project = os.environ.get("PS_TRAINER_DIR")
    if project:
        if not os.path.isdir(project):
            print(f"train.py: PS_TRAINER_DIR={project} is not a directory", file=sys.stderr)
            return 2
        os.chdir(project)
    from ps_trainer.tools.cli import main as cli_main

    args = sys.argv[1:] if argv is None else list(argv)
    return cli_main(["train", "--address", "auto", *args])


if __name__ == "__main__":
    sys.exit(main())
