"""The ``ps-trainer`` command.

    ps-trainer train --config configs/quickstart.yaml [--mode local] [--set run.max_updates=500]
    ps-trainer train --resume runs/quickstart
    ps-trainer scale --task rotation --workers 3 [--address auto] [--run NAME] [--wait-s 10]
    ps-trainer status [--address auto]
    ps-trainer eval --checkpoint runs/quickstart/checkpoints/best.pt
    ps-trainer finetune --checkpoint runs/pretrain/checkpoints/best.pt --labels 16
    ps-trainer export --checkpoint runs/pretrain/checkpoints/best.pt --out resnet50-trunk.pth
    ps-trainer experiment configs/experiments/labels.yaml
    ps-trainer bench --quick --out bench.json
    ps-trainer chaos --config configs/quickstart.yaml --kill-every-s 15 --out chaos.json
    ps-trainer data export --layout cityscapes --size 1024x2048 --out data/cityscapes-like --val 8
    ps-trainer --version
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from ps_trainer.config import ConfigError
from ps_trainer.core.protocol import RunGivenUp

log = logging.getLogger("ps_trainer")
_PROBE_TIMEOUT_S = 3.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ps-trainer", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Distributed, asynchronous, multi-task self-supervised training for vision, "
                    "on Ray.", epilog="examples:\n" + __doc__.split("\n\n", 1)[1])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train on the embedded data or a configured data set")
    train.add_argument("--config", help="experiment YAML (not needed with --resume)")
    train.add_argument("--mode", choices=("distributed", "local"), default="distributed",
                       help="distributed: parameter server on Ray (default); local: one process")
    train.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY.PATH=VALUE", help="override a config value (repeatable)")
    train.add_argument("--address", help="join a Ray cluster: 'auto' or ray://host:port")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue from a run folder's checkpoint")
    train.add_argument("--resume-if-present", action="store_true",
                       help="with --config: continue the run in run.out_dir if it has a "
                            "checkpoint, else start it (a job that is retried after its driver "
                            "died picks up where it was)")
    train.add_argument("--overwrite", action="store_true",
                       help="delete the checkpoints and metrics of another run in run.out_dir "
                            "(without it, train refuses such a folder)")

    for name, text in (("scale", "change the number of workers of a task while it trains"),
                       ("status", "show a running training's state")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--address", default="auto", help="Ray address (default: auto)")
        cmd.add_argument("--namespace", default="ps_trainer")
        cmd.add_argument("--run", help="run name (needed when several runs share the cluster)")
        if name == "scale":
            cmd.add_argument("--task", required=True)
            cmd.add_argument("--workers", type=int, required=True)
            cmd.add_argument("--wait-s", type=float, default=10.0,
                             help="how long to wait for new workers to start before answering "
                                  "(those not started by then are reported as pending)")

    ev = sub.add_parser("eval", help="score a checkpoint's mIoU on the validation split")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--config", help="config to take the data from (default: the checkpoint's)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    ft = sub.add_parser("finetune", help="train a segmentation head on N labels from a "
                                         "pretrained trunk (or 'none': a random trunk)")
    ft.add_argument("--checkpoint", required=True, help="checkpoint file, or 'none'")
    ft.add_argument("--labels", type=int, required=True, help="number of labelled images")
    ft.add_argument("--config", help="config (default: the checkpoint's; required with 'none')")
    ft.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    ft.add_argument("--out", help="run folder (default: <run>/finetune-N<labels>)")
    ft.add_argument("--seed", type=int, help="seed (default: run.seed of the config)")
    ft.add_argument("--overwrite", action="store_true",
                    help="delete another run's checkpoints in the run folder")
    ft.add_argument("--unlabelled-task", dest="unlabelled_tasks", action="append", default=[],
                    metavar="TASK", help="also train TASK on the unlabelled pool (e.g. "
                                         "self_training: semi-supervised fine-tuning); repeatable")

    xp = sub.add_parser("export", help="write a checkpoint's ResNet trunk as a torchvision "
                                       "state_dict (a model.pretrained file; torchvision, "
                                       "mmsegmentation and DeepLab code load it)")
    xp.add_argument("--checkpoint", required=True)
    xp.add_argument("--out", required=True, help="the .pth file to write")
    xp.add_argument("--with-head", action="store_true",
                    help="add the segmentation head, under 'segmentation_head.'")
    xp.add_argument("--stats-of", metavar="TASK", help="whose batch-norm statistics to write "
                                                      "(default: segmentation's when trained, "
                                                      "else the first task's that has them)")

    ex = sub.add_parser("experiment", help="run a grid of pretraining x balancing x labels x seeds")
    ex.add_argument("file", help="experiment YAML (configs/experiments/*.yaml)")
    ex.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override applied to every run's config")
    ex.add_argument("--summarise", action="store_true", help="only rewrite the table and plot")
    ex.add_argument("--runs", help="comma-separated run names: train only these rows (e.g. to "
                                   "split a grid over two processes; the table covers all rows)")
    ex.add_argument("--seeds", help="comma-separated seeds: train only these of the grid's seeds")

    bench = sub.add_parser("bench", help="measure the parameter server (see ps_trainer/tools/bench.py)")
    bench.add_argument("--quick", action="store_true", help="a reduced run, under 2 minutes on 2 cores")
    bench.add_argument("--out", help="write the results as JSON to this file (plots beside it)")
    bench.add_argument("--sections", help="comma-separated subset of: trunks, scaling, memory, "
                                          "end_to_end, hardware, statistical (the default: "
                                          "these), real_sizes (ResNet-50/101 with AdamW), data")

    ch = sub.add_parser("chaos", help="train twice on a local Ray, undisturbed and with an actor "
                                      "process SIGKILLed or paused every few seconds; compare")
    ch.add_argument("--config", required=True)
    ch.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    ch.add_argument("--kill-every-s", type=float, default=15.0, help="one fault this often")
    ch.add_argument("--faults", default="kill:server,kill:worker,kill:evaluator,kill:coordinator,"
                                        "pause:worker,pause:server",
                    help="the faults, taken in turn (ACTION:ROLE; ACTION kill or pause, ROLE "
                         "server, worker, evaluator or coordinator)")
    ch.add_argument("--pause-s", type=float, default=15.0,
                    help="how long a paused process stays stopped before SIGCONT")
    ch.add_argument("--out", help="write the report as JSON to this file")
    _data_parser(sub)
    return p


def _data_parser(sub) -> None:
    data = sub.add_parser("data", help="data sets: write synthetic scenes in a real layout")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    ex = data_sub.add_parser("export", help="write synthetic scenes in the Cityscapes or GTA5 "
                                            "layout, at any resolution (see ps_trainer/data/export.py)")
    ex.add_argument("--layout", choices=("cityscapes", "gta5"), required=True)
    ex.add_argument("--size", required=True, metavar="HxW",
                    help="image height x width, e.g. 1024x2048 (Cityscapes), 1052x1914 (GTA5)")
    ex.add_argument("--out", required=True, help="a new (or empty) folder")
    ex.add_argument("--train", type=int, default=16, help="training images (default 16)")
    ex.add_argument("--val", type=int, help="validation images (cityscapes; default 8); "
                                            "gta5 has no val split")
    ex.add_argument("--domain", choices=("source", "shifted"), default="source",
                    help="the synthetic domain (shifted: other palettes, textures, lighting)")
    ex.add_argument("--seed", type=int, default=0)


def _version() -> str:
    """The installed package's version, else the one in setup.cfg (a source checkout)."""
    from importlib import metadata

    try:
        return metadata.version("ps-trainer")
    except metadata.PackageNotFoundError:
        import configparser
        from pathlib import Path

        setup = configparser.ConfigParser()
        setup.read(Path(__file__).resolve().parent.parent / "setup.cfg")
        return setup.get("metadata", "version", fallback="unknown")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"ps-trainer: configuration error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, LookupError, ValueError, ConnectionError, RunGivenUp) as err:
        print(f"ps-trainer: {err}", file=sys.stderr)
        return 1


def _train(args) -> int:
    from ps_trainer.run import launch
    from ps_trainer.run.config_gate import load_run_config

    if args.resume:
        cfg, checkpoint = launch.resume_from(args.resume, args.overrides)
    elif args.config:
        cfg, checkpoint = load_run_config(args.config, args.overrides), None
        found = (launch.resume_from(cfg.run.out_dir, args.overrides, missing_ok=True)
                 if args.resume_if_present else None)
        if found is not None:
            cfg, checkpoint = found
    else:
        raise ConfigError("", "train needs --config FILE or --resume RUN_DIR")
    if args.mode == "local":
        summary = launch.run_local(cfg, resume=checkpoint, overwrite=args.overwrite)
    else:
        if args.address:
            _reachable(args.address)
        summary = launch.run_distributed(cfg, args.address, resume=checkpoint,
                                         overwrite=args.overwrite)
    miou = summary.miou
    if miou is not None:
        print(f"final mIoU: {miou:.4f}")
    else:
        from ps_trainer.run.evaluator import SEGMENTATION
        why = "no final evaluation" if SEGMENTATION in cfg.task_names else "no segmentation task"
        print(f"final mIoU: n/a ({why})")
    print(f"run folder: {cfg.run.out_dir}")
    if summary.error:             # what was trained is kept above; the cause, in one line
        print(f"ps-trainer: {summary.error}", file=sys.stderr)
        return 1
    return 0


def _connect(args) -> None:
    """Join the cluster at --address, failing within seconds (not after Ray's minutes of
    retries) when nothing answers there."""
    import ray

    _reachable(args.address)
    ray.init(address=args.address, namespace=args.namespace, logging_level=logging.WARNING)


def _reachable(address: str) -> None:
    """Fail within seconds, with one line, when nothing answers at the cluster `address`."""
    host, port = _cluster_address(address)
    _probe(host, port, address)


def _cluster_address(address: str) -> tuple[str, int]:
    """(host, port) of the GCS that `address` ('auto', host:port or ray://host:port) names."""
    from ray._private.services import canonicalize_bootstrap_address, parse_address

    if address.startswith("ray://"):      # Ray Client: probe its server port
        found = parse_address(address[len("ray://"):].split("/", 1)[0])
    else:
        try:
            resolved = canonicalize_bootstrap_address(address)
        except (ValueError, ConnectionError) as err:
            raise ConnectionError(f"no usable Ray cluster at --address {address}: {err}") from None
        if resolved is None:
            raise ConnectionError(f"no running Ray cluster found (--address {address}); start "
                                  f"one with `ray start --head` or pass --address HOST:PORT")
        found = parse_address(resolved)
    if found is None:
        raise ConnectionError(f"--address {address} is not HOST:PORT, 'auto' or ray://HOST:PORT")
    return found[0], int(found[1])


def _probe(host: str, port: int, address: str) -> None:
    """A TCP connect to the cluster's port, bounded by _PROBE_TIMEOUT_S."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            pass
    except OSError as err:
        why = err.strerror or type(err).__name__.replace("Error", " error").lower()
        raise ConnectionError(f"cannot reach a Ray cluster at {host}:{port} (--address {address}): "
                              f"{why}") from None


def _scale(args) -> int:
    import ray

    from ps_trainer.run.launch import find_coordinator

    if args.workers < 0:            # a mistake in the command: said before any cluster is asked
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    _connect(args)
    coordinator = find_coordinator(args.namespace, args.run)
    counts = ray.get(coordinator.scale.remote(args.task, args.workers, max(args.wait_s, 0.0)))
    print(_scale_answer(args.task, counts["running"], counts["pending"]))
    return 0


def _scale_answer(task: str, running: int, pending: int) -> str:
    answer = f"{task}: {running} worker{'s' if running != 1 else ''} running"
    if pending:
        answer += (f", {pending} pending (not placed by Ray yet, or still starting; "
                   f"see `ps-trainer status`)")
    return answer


def _status(args) -> int:
    import ray

    from ps_trainer.run.launch import find_coordinator

    _connect(args)
    status = ray.get(find_coordinator(args.namespace, args.run).status.remote()).to_dict()
    status.pop("latest_eval", None)
    print(json.dumps(status, indent=2, default=str))
    return 0


def _eval(args) -> int:
    from ps_trainer.run.launch import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.config, args.overrides)
    print(f"mIoU: {result.miou:.4f}")
    print("per-class IoU: " + ", ".join("-" if v is None else f"{v:.3f}" for v in result.per_class_iou))
    return 0


def _finetune(args) -> int:
    from pathlib import Path

    from ps_trainer.core.checkpoint import load_checkpoint
    from ps_trainer.recipes.finetune import finetune
    from ps_trainer.run.launch import checkpoint_config

    if args.labels < 1:
        raise ValueError(f"--labels must be >= 1, got {args.labels}")
    checkpoint = None if args.checkpoint.lower() == "none" else load_checkpoint(args.checkpoint)
    if checkpoint is None and not args.config:
        raise ValueError("--checkpoint none needs --config (the data and model to use)")
    overrides = list(args.overrides)
    if args.unlabelled_tasks:
        overrides.append(f"finetune.unlabelled_tasks=[{','.join(args.unlabelled_tasks)}]")
    cfg = checkpoint_config(checkpoint, args.config, overrides)
    if args.out:
        out = args.out
    elif checkpoint is not None:
        out = str(Path(args.checkpoint).resolve().parent.parent / f"finetune-N{args.labels}")
    else:
        out = str(Path(cfg.run.out_dir) / f"scratch-N{args.labels}")
    summary = finetune(cfg, checkpoint, args.labels, out, args.seed, overwrite=args.overwrite)
    print(f"mIoU: {summary.miou:.4f} ({args.labels} labels, "
          f"{'pretrained' if checkpoint is not None else 'random'} trunk)")
    print(f"run folder: {out}")
    return 0


def _export(args) -> int:
    from ps_trainer.tools.export import export_trunk

    done = export_trunk(args.checkpoint, args.out, args.with_head, args.stats_of)
    what = "trunk and segmentation head" if done.with_head else "trunk"
    print(f"exported the {done.backbone} {what} ({done.tensors} tensors, norm statistics of "
          f"{done.stats_of}) to {done.path}")
    if done.output_stride != 32:
        print(f"trained at output stride {done.output_stride}: dilate the ResNet's last stages "
              f"the same way (DeepLab's replace_stride_with_dilation) for the same features")
    return 0


def _experiment(args) -> int:
    from ps_trainer.recipes.experiment import Experiment, load_experiment

    exp, base_dir = load_experiment(args.file)
    runner = Experiment(exp, base_dir, tuple(args.overrides))
    only = tuple(args.runs.split(",")) if args.runs else None
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    out = runner.summarise() if args.summarise else runner.run(only, seeds)
    print((out / "results.md").read_text())
    print(f"results: {out / 'results.csv'}, {out / 'results.md'}, {out / 'results.png'}")
    return 0


def _bench(args) -> int:
    import dataclasses

    from ps_trainer.tools.bench import SECTIONS, BenchPlan, format_report, run_bench

    plan = BenchPlan.quick() if args.quick else BenchPlan()
    if args.sections:
        wanted = tuple(s.strip() for s in args.sections.split(",") if s.strip())
        unknown = sorted(set(wanted) - set(SECTIONS))
        if unknown:
            raise ValueError(f"--sections: unknown {', '.join(unknown)}; choose from "
                             f"{', '.join(SECTIONS)}")
        plan = dataclasses.replace(plan, sections=wanted)
    print(format_report(run_bench(plan, args.out)))
    if args.out:
        print(f"written: {args.out}")
    return 0


def _chaos(args) -> int:
    from ps_trainer.run import launch
    from ps_trainer.run.config_gate import load_run_config
    from ps_trainer.tools.chaos import chaos, parse_faults

    if args.kill_every_s <= 0:
        raise ValueError(f"--kill-every-s must be > 0, got {args.kill_every_s}")
    if args.pause_s <= 0:
        raise ValueError(f"--pause-s must be > 0, got {args.pause_s}")
    faults = parse_faults(args.faults)
    cfg = load_run_config(args.config, args.overrides)
    launch.connect(cfg, None)
    report = chaos(cfg, args.kill_every_s, faults, args.pause_s)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


def _data(args) -> int:
    from ps_trainer.data.export import ExportPlan, export, parse_size

    height, width = parse_size(args.size)
    val = args.val if args.val is not None else (8 if args.layout == "cityscapes" else 0)
    plan = ExportPlan(args.layout, height, width, args.out, args.train, val, args.domain,
                      args.seed)
    counts = export(plan)
    written = " + ".join(f"{n} {split}" for split, n in counts.items()) or "no"
    print(f"wrote {written} images ({args.layout} layout, {height}x{width}, {args.domain} "
          f"domain) to {args.out}")
    return 0


_COMMANDS = {"train": _train, "scale": _scale, "status": _status, "eval": _eval,
             "finetune": _finetune, "export": _export, "experiment": _experiment,
             "bench": _bench, "chaos": _chaos, "data": _data}

if __name__ == "__main__":
    sys.exit(main())
