"""ps_trainer: distributed, asynchronous, multi-task self-supervised training for vision, on Ray.

    from ps_trainer import load_run_config, run_distributed, run_local
    cfg = load_run_config("configs/quickstart.yaml", ["run.max_updates=500"])
    summary = run_local(cfg)             # or run_distributed(cfg)
    print(summary.miou)

The runners, which assemble tasks from ``ps_trainer_workers``, are imported on first use
so that ``import ps_trainer`` stays light.
"""
from ps_trainer.config import Config, ConfigError, load_config

__version__ = "0.1.0"

_LAZY = {
    "load_run_config": "ps_trainer.run.config_gate", "run_local": "ps_trainer.run.launch",
    "run_distributed": "ps_trainer.run.launch", "evaluate_checkpoint": "ps_trainer.run.launch",
    "finetune": "ps_trainer.recipes.finetune", "export_trunk": "ps_trainer.tools.export",
    "Experiment": "ps_trainer.recipes.experiment",
    "load_experiment": "ps_trainer.recipes.experiment", "ParameterStore": "ps_trainer.core.store",
    "ParameterServer": "ps_trainer.transport.server", "ParameterClient": "ps_trainer.transport.client",
    "MultiTaskModel": "ps_trainer.model",
}

__all__ = ["Config", "ConfigError", "load_config", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ps_trainer' has no attribute {name!r}")
