"""Build a RunConfig from YAML files and ``section.key=value`` overrides, rejecting anything unknown.

Layers apply in order (defaults, then each file, then each override); mappings merge key by key, other values
replace. Every layer is checked against the schema on its own, so an error names the file or override it came from.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Iterable, Union

import yaml

from quantization import hooks_optimizer, method_hooks

from .schema import (AMP_MODES, COMPILE_MODES, DATASET_NAMES, DEVICES, ERASE_MODES, INTERPOLATIONS, MIXUP_MODES,
                     OPTIMIZER_NAMES, SCHED_INTERVALS, ConfigError, RunConfig, choices_error)

_FREE_FORM = {("model", "timm_kwargs"), ("method", "recipe")}  # mappings whose keys the schema does not fix


def load_config(paths: Iterable["str | Path"] = (), overrides: Iterable[str] = ()) -> RunConfig:
    """The run configuration from YAML ``paths`` and ``overrides`` such as ``optim.lr=1e-3`` (values parsed as YAML)."""
    merged = dataclasses.asdict(RunConfig())
    for path in paths:
        layer = read_yaml(path)
        _check_keys(layer, RunConfig, str(path), ())
        _merge(merged, layer)
    for text in overrides:
        layer = parse_override(text)
        _check_keys(layer, RunConfig, f"override {text!r}", ())
        _merge(merged, layer)
    config = _build(RunConfig, merged, ())
    validate(config)
    return config


def read_yaml(path: "str | Path") -> dict:
    """A YAML file holding a mapping; a missing file or another top-level type is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    with path.open() as handle:
        data = _parse_yaml(handle.read(), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def parse_override(text: str) -> dict:
    """``a.b.c=value`` as the nested mapping {a: {b: {c: value}}}, the value parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value (e.g. optim.lr=1e-3)")
    value: Any = _parse_yaml(raw, f"override {text!r}") if raw.strip() else None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(error).split())}") from None


def config_to_dict(config: RunConfig) -> dict:
    """Plain data for YAML/JSON, with the method's recipe written out in full so the file alone reproduces the run."""
    data = dataclasses.asdict(config)
    data["method"]["recipe"] = config.method.resolved.to_dict()
    return data


def save_config(config: RunConfig, path: "str | Path") -> None:
    with Path(path).open("w") as handle:
        yaml.safe_dump(config_to_dict(config), handle, sort_keys=False)


def method_label(config: RunConfig) -> str:
    """How a run's method is called in logs and tables."""
    return config.method.name or config.method.resolved.name


def validate(config: RunConfig) -> None:
    """Checks across fields that types alone do not catch; raises ConfigError naming the bad value."""
    choices = {"train.amp": (config.train.amp, AMP_MODES), "train.device": (config.train.device, DEVICES),
               "train.compile": (config.train.compile, COMPILE_MODES),
               "optim.sched_interval": (config.optim.sched_interval, SCHED_INTERVALS),
               "optim.name": (config.optim.name, OPTIMIZER_NAMES), "data.dataset": (config.data.dataset, DATASET_NAMES),
               "aug.interpolation": (config.aug.interpolation, INTERPOLATIONS),
               "aug.remode": (config.aug.remode, ERASE_MODES), "aug.mixup_mode": (config.aug.mixup_mode, MIXUP_MODES)}
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise choices_error(key, value, valid)
    if config.optim.warmup_epochs < 0:
        raise ConfigError(f"optim.warmup_epochs must be >= 0, got {config.optim.warmup_epochs}")
    if config.optim.warmup_prefix and config.optim.warmup_epochs >= config.train.epochs:
        raise ConfigError(f"optim.warmup_prefix leaves no epochs for the cosine: optim.warmup_epochs="
                          f"{config.optim.warmup_epochs} must be below train.epochs={config.train.epochs}")
    positive = {"train.epochs": config.train.epochs, "data.batch_size": config.data.batch_size,
                "aug.repeated_aug": config.aug.repeated_aug, "model.img_size": config.model.img_size,
                "model.in_chans": config.model.in_chans, "train.log_interval": config.train.log_interval}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    if config.train.osc_interval < 0:
        raise ConfigError(f"train.osc_interval must be >= 0 (0: off), got {config.train.osc_interval}")
    if config.data.num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {config.data.num_workers}")
    for key, value in (("optim.betas", config.optim.betas), ("aug.scale", config.aug.scale)):
        if len(value) != 2:
            raise ConfigError(f"{key} must have two numbers, got {value}")
    check_timm_kwargs(config.model.timm_kwargs)
    try:
        hooks = method_hooks(config.method.resolved)
        hooks_optimizer(hooks)
    except ValueError as error:
        raise ConfigError(f"method.recipe: {error}") from None
    recipe = config.method.resolved
    if config.train.compile != "eager" and recipe.op is not None:
        raise ConfigError(f"train.compile={config.train.compile!r} cannot trace recipe {recipe.name!r}: its Linear op "
                          f"({type(recipe.op).__name__}) is plain PyTorch with host-side control flow, not the "
                          f"registered MX quantizer ops; use train.compile=eager, or a recipe of the six quantizers "
                          f"(tetrajet, tetrajet_qema, tetrajet_qramping, microscaling, ...)")
    if config.train.cuda_graph:
        check_cuda_graph(config, hooks)
    for hook in hooks:
        if hook.optimizer is not None and config.optim.name != "adamw":
            raise ConfigError(f"optim.name {config.optim.name!r} cannot be used with a {hook.name} recipe: "
                              f"{hook.name} wraps AdamW (set optim.name=adamw)")


def check_cuda_graph(config: RunConfig, hooks: list) -> None:
    """What train.cuda_graph needs that the configuration decides (the device found and the process count are
    checked when the run starts: training.cuda_graph.check_context); ConfigError naming the setting."""
    train, recipe = config.train, config.method.resolved
    if train.device == "cpu":
        raise ConfigError("train.cuda_graph=true needs a CUDA device, got train.device='cpu'; use train.device=cuda "
                          "(or auto on a GPU machine), or train.cuda_graph=false")
    if train.amp == "fp16":
        raise ConfigError("train.cuda_graph=true cannot be used with train.amp='fp16': its dynamic loss scale "
                          "(GradScaler) reads on the host whether the gradients are finite; use train.amp=bf16 or fp32")
    if train.compile != "eager":
        raise ConfigError(f"train.cuda_graph=true cannot be combined with train.compile={train.compile!r}: capture "
                          f"the eager step or compile it, not both; set train.compile=eager")
    if recipe.op is not None:
        raise ConfigError(f"train.cuda_graph=true cannot capture recipe {recipe.name!r}: its Linear op "
                          f"({type(recipe.op).__name__}) is plain PyTorch with host-side control flow; use "
                          f"train.cuda_graph=false, or a recipe of the six MX quantizers (tetrajet, ...)")
    unsafe = [hook.name for hook in hooks if not hook.capture_safe]
    if unsafe:
        raise ConfigError(f"train.cuda_graph=true cannot capture {' and '.join(unsafe)} (recipe {recipe.name!r}): its "
                          f"training-loop part depends on host values that change between steps (Dampen: its loss "
                          f"weight follows the schedule); use train.cuda_graph=false")


def check_timm_kwargs(kwargs: dict) -> None:
    """Reject null values in model.timm_kwargs: ``{depth:6}`` is YAML for the key 'depth:6' with no value, and
    timm.create_model drops null arguments, so the default model would train without a word."""
    for key, value in kwargs.items():
        if value is not None:
            continue
        if ":" in str(key):
            name, _, given = str(key).partition(":")
            raise ConfigError(f"model.timm_kwargs has the key {key!r} with no value: YAML needs a space after the "
                              f"colon, {{{name.strip()}: {given.strip()}}}")
        raise ConfigError(f"model.timm_kwargs.{key} is null: give it a value, or leave the key out for timm's default")


def _check_keys(layer: Any, cls: type, where: str, prefix: tuple) -> None:
    if not isinstance(layer, dict):
        raise ConfigError(f"{where}: {'.'.join(prefix) or 'the top level'} must be a mapping, got {layer!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in layer.items():
        if key not in fields:
            section = ".".join(prefix) or "the top level"
            raise ConfigError(f"{where}: unknown key {'.'.join(prefix + (key,))!r}; valid keys of {section}: "
                              f"{', '.join(fields)}")
        if dataclasses.is_dataclass(hints[key]):
            _check_keys(value, hints[key], where, prefix + (key,))


def _merge(into: dict, layer: dict) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _build(cls: type, data: dict, prefix: tuple):
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        key = prefix + (f.name,)
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            values[f.name] = _build(hint, data[f.name], key)
        else:
            values[f.name] = _coerce(data[f.name], hint, ".".join(key))
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against the type ``hint`` (floats also accept ints and strings like '5e-4')."""
    origin = typing.get_origin(hint)
    if origin is Union:
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ValueError as error:
                errors.append(error)
        raise errors[0] if len(errors) == 1 else ConfigError(f"{key} must be one of "
                                                             f"{_type_names(options)}, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if hint is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(item, float, key) for item in value]
        raise ConfigError(f"{key} must be a list of numbers, got {value!r}")
    if isinstance(value, hint):
        return value
    raise ConfigError(f"{key} must be {_type_names((hint,))}, got {value!r}")


def _type_names(types: tuple) -> str:
    names = {bool: "true/false", str: "a string", dict: "a mapping", int: "an integer", float: "a number",
             list: "a list of numbers", type(None): "null"}
    return " or ".join(names.get(t, str(t)) for t in types)
