"""The Linear ops that replace a recipe's six quantizers (other papers' 4-bit recipes), found by their config's type;
the configs of training-side methods that a recipe carries; and the per-layer state that methods keep inside each
QLinear.

A baseline module registers its config class (a dataclass) and its op under the name that recipes and YAML files
use as the key of that config; ``Recipe.op`` then holds a config instance and ``QLinear`` runs the op registered for
its type. The core (linear.py, recipes.py) imports no baseline: a new op is one module plus its config class::

    @register_linear_op("mine", MineConfig)
    def mine_linear(x, weight, bias, config): ...

A method that tracks something per weight (Q-EMA, Freeze) registers a factory instead, so that its state is built
with the layer and saved in the model's state dict, without linear.py importing the method::

    register_layer_state("mine_state", lambda recipe, weight: MineState(weight.shape)
                         if recipe.method_config("mine") is not None else None)

A state module may also define ``rounding_target(weight)`` (what the weight quantizer's "ema" rounding compares
against: Q-EMA's) and ``legacy_keys`` (old buffer names in the layer's state dict -> its own, for old checkpoints).

A training-side method (Q-Ramping, Dampen, Freeze) registers its config class under its recipe key, so that recipes
and YAML files carry its settings without recipes.py importing the method::

    register_method_config("mine", MineConfig, position=40)   # recipe.method_config("mine"): a MineConfig or None
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

LinearOpFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", Any], torch.Tensor]


@dataclass(frozen=True)
class LinearOp:
    """A registered op: ``fn(x, weight, bias, config)`` computes the Linear for a ``config_cls`` instance."""

    name: str
    config_cls: type
    fn: LinearOpFn


@dataclass(frozen=True)
class MethodConfig:
    """A registered training-side method: its recipe key, its config class and where the key goes in
    ``Recipe.to_dict`` among the methods' keys (ascending ``position``)."""

    name: str
    config_cls: type
    position: int


_OPS: dict[str, LinearOp] = {}
_METHODS: dict[str, MethodConfig] = {}
_RESERVED: set[str] = set()


def reserve_names(names: Iterable[str]) -> None:
    """Names no op or method may take (the recipe's own fields, so that a recipe key means one thing)."""
    _RESERVED.update(names)


def _check_key(kind: str, name: str, config_cls: type) -> None:
    """ValueError unless ``name`` is a free recipe key, TypeError unless ``config_cls`` is a dataclass that no op or
    method has taken."""
    if not name.isidentifier() or name in _RESERVED or name in _METHODS:
        raise ValueError(f"{kind} name {name!r} must be an identifier and not a recipe field "
                         f"({', '.join(sorted(_RESERVED | set(_METHODS)))})")
    if name in _OPS:
        raise ValueError(f"{kind} name {name!r} is already registered (for {_OPS[name].config_cls.__name__})")
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"the config of {kind} {name!r} must be a dataclass, got {config_cls!r}")
    taken = [f"linear op {e.name!r}" for e in _OPS.values() if e.config_cls is config_cls]
    taken += [f"method {e.name!r}" for e in _METHODS.values() if e.config_cls is config_cls]
    if taken:
        raise TypeError(f"{config_cls.__name__} is already the config of {taken[0]}")


def register_linear_op(name: str, config_cls: type) -> Callable[[LinearOpFn], LinearOpFn]:
    """Decorator: register ``fn(x, weight, bias, config)`` as the Linear op of ``config_cls`` under ``name``.

    Raises ValueError for a name that is no identifier, a recipe field, or already taken, and TypeError for a
    config class that is not a dataclass or already has an op or method.
    """
    _check_key("linear op", name, config_cls)

    def register(fn: LinearOpFn) -> LinearOpFn:
        _OPS[name] = LinearOp(name, config_cls, fn)
        return fn

    return register


def linear_ops() -> Mapping[str, LinearOp]:
    """The registered ops by name, in registration order (read-only)."""
    return MappingProxyType(_OPS)


def linear_op(config: object) -> LinearOp:
    """The op registered for ``type(config)``; TypeError naming the registered config classes if there is none."""
    for op in _OPS.values():
        if type(config) is op.config_cls:
            return op
    choices = ", ".join(f"{op.name}: {op.config_cls.__name__}" for op in _OPS.values()) or "none registered"
    raise TypeError(f"{type(config).__name__} is not the config of a registered linear op ({choices})")


def register_method_config(name: str, config_cls: type, position: int) -> type:
    """Register ``config_cls`` (a dataclass) as the config of the training-side method ``name``: a recipe then
    takes it under ``name`` (argument, ``to_dict``/``from_dict`` and YAML key) and ``recipe.method_config(name)``
    reads it. ``position`` orders the methods' keys in ``Recipe.to_dict`` (so in config.yaml files), whatever order
    the modules are imported in. Returns ``config_cls``. Raises as ``register_linear_op`` does, and ValueError for a
    ``position`` that another method holds."""
    _check_key("method", name, config_cls)
    held = [e.name for e in _METHODS.values() if e.position == position]
    if held:
        raise ValueError(f"method {name!r}: position {position} is already held by method {held[0]!r}")
    entries = [*_METHODS.values(), MethodConfig(name, config_cls, position)]
    _METHODS.clear()
    _METHODS.update((e.name, e) for e in sorted(entries, key=lambda e: e.position))
    return config_cls


def method_configs() -> Mapping[str, MethodConfig]:
    """The registered methods by name, in ascending ``position`` (read-only)."""
    return MappingProxyType(_METHODS)


def method_config_name(config: object) -> str:
    """The name of the method registered for ``type(config)``; TypeError naming the registered config classes if
    there is none."""
    for entry in _METHODS.values():
        if type(config) is entry.config_cls:
            return entry.name
    choices = ", ".join(f"{e.name}: {e.config_cls.__name__}" for e in _METHODS.values()) or "none registered"
    raise TypeError(f"{type(config).__name__} is not the config of a registered method ({choices})")


LayerStateFactory = Callable[[Any, torch.Tensor], "nn.Module | None"]
_LAYER_STATES: dict[str, LayerStateFactory] = {}


def register_layer_state(attribute: str, factory: LayerStateFactory) -> None:
    """Every QLinear built from now on sets ``attribute`` to ``factory(recipe, weight)``: a module holding the
    method's per-layer buffers (saved and loaded with the model), or None when the recipe does not use the method.
    Raises ValueError for a name that is no identifier or already taken."""
    if not attribute.isidentifier():
        raise ValueError(f"layer state name {attribute!r} must be an identifier")
    if attribute in _LAYER_STATES:
        raise ValueError(f"layer state {attribute!r} is already registered")
    _LAYER_STATES[attribute] = factory


def layer_state_names() -> tuple[str, ...]:
    """The attribute names of the registered per-layer states."""
    return tuple(_LAYER_STATES)


def layer_states(recipe: Any, weight: torch.Tensor) -> dict[str, "nn.Module | None"]:
    """The registered per-layer states for a layer with ``recipe`` and ``weight``, by attribute name."""
    return {attribute: factory(recipe, weight) for attribute, factory in _LAYER_STATES.items()}
