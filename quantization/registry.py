"""The Linear ops that replace a recipe's six quantizers (other papers' 4-bit recipes), found by their config's type;
and the per-layer state that methods keep inside each QLinear.

A baseline module registers its config class (a dataclass) and its op under the name that recipes and YAML files
use as the key of that config; ``Recipe.op`` then holds a config instance and ``QLinear`` runs the op registered for
its type. The core (linear.py, recipes.py) imports no baseline: a new op is one module plus its config class::

    @register_linear_op("mine", MineConfig)
    def mine_linear(x, weight, bias, config): ...

A method that tracks something per weight (Freeze) registers a factory instead, so that its state is built with the
layer and saved in the model's state dict, without linear.py importing the method::

    register_layer_state("mine_state", lambda recipe, weight: MineState(weight.shape) if recipe.mine else None)
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


_OPS: dict[str, LinearOp] = {}
_RESERVED: set[str] = set()


def reserve_names(names: Iterable[str]) -> None:
    """Names no op may take (the recipe's own fields, so that a recipe key means one thing)."""
    _RESERVED.update(names)


def register_linear_op(name: str, config_cls: type) -> Callable[[LinearOpFn], LinearOpFn]:
    """Decorator: register ``fn(x, weight, bias, config)`` as the Linear op of ``config_cls`` under ``name``.

    Raises ValueError for a name that is no identifier, a recipe field, or already taken, and TypeError for a
    config class that is not a dataclass or already has an op.
    """
    if not name.isidentifier() or name in _RESERVED:
        raise ValueError(f"linear op name {name!r} must be an identifier and not a recipe field "
                         f"({', '.join(sorted(_RESERVED))})")
    if name in _OPS:
        raise ValueError(f"linear op name {name!r} is already registered (for {_OPS[name].config_cls.__name__})")
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"the config of linear op {name!r} must be a dataclass, got {config_cls!r}")
    taken = [op.name for op in _OPS.values() if op.config_cls is config_cls]
    if taken:
        raise TypeError(f"{config_cls.__name__} is already the config of linear op {taken[0]!r}")

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


def layer_states(recipe: Any, weight: torch.Tensor) -> dict[str, "nn.Module | None"]:
    """The registered per-layer states for a layer with ``recipe`` and ``weight``, by attribute name."""
    return {attribute: factory(recipe, weight) for attribute, factory in _LAYER_STATES.items()}
