"""Configuration: the YAML schema as validated, frozen dataclasses (``schema``), the option
checks pluggable classes use (``options``) and the name registries (``registry``).

The schema's names are exported here: ``from ps_trainer.config import Config, load_config``.
"""
from ps_trainer.config.options import ConfigError, FrozenDict
from ps_trainer.config.schema import (Config, DATA_SOURCES, DataConfig, DomainConfig, EvalConfig,
                                      MetricsConfig, ModelConfig, OptimizerConfig, RENAMED_VALUES,
                                      ResolvedSplit, RunConfig, SHIFTED_DOMAIN, SOURCE_CLASSES,
                                      SOURCE_SPLITS, SPLIT_ROLES, ServerConfig, SplitSource, TaskConfig,
                                      apply_overrides, config_from_dict, config_to_dict, dump_config,
                                      load_config, read_yaml_mapping)

__all__ = [
    "Config", "ConfigError", "DATA_SOURCES", "DataConfig", "DomainConfig", "EvalConfig",
    "FrozenDict", "MetricsConfig", "ModelConfig", "OptimizerConfig", "RENAMED_VALUES",
    "ResolvedSplit", "RunConfig", "SHIFTED_DOMAIN", "SOURCE_CLASSES", "SOURCE_SPLITS",
    "SPLIT_ROLES", "ServerConfig", "SplitSource", "TaskConfig", "apply_overrides",
    "config_from_dict", "config_to_dict", "dump_config", "load_config", "read_yaml_mapping",
]
