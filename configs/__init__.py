"""Run configuration: the schema (typed dataclasses) and the loader for YAML files plus command-line overrides.

The YAML files beside this module: ``models/`` (network + the paper's per-model training settings), ``methods/``
(quantization recipe), and self-contained quick-run files such as ``quickstart.yaml``.
"""
from .loader import config_to_dict, load_config, method_label, parse_override, save_config
from .resume import ConfigMismatchError, check_resume_config, config_differences
from .schema import (DATASET_NAMES, OPTIMIZER_NAMES, AugConfig, ConfigError, DataConfig, MethodConfig, ModelConfig,
                     OptimConfig, RunConfig, TrainConfig, choices_error)

__all__ = ["DATASET_NAMES", "OPTIMIZER_NAMES", "AugConfig", "ConfigError", "ConfigMismatchError", "DataConfig",
           "MethodConfig", "ModelConfig", "OptimConfig", "RunConfig", "TrainConfig", "check_resume_config",
           "choices_error", "config_differences", "config_to_dict", "load_config", "method_label", "parse_override",
           "save_config"]
