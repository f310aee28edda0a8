"""Named quantization recipes as typed data: what each of the six quantizers of a Linear does.

Y = X W^T with X: (N, D) tokens and W: (C, D). Forward: Q1 on X and Q2 on W (1x32 along D). Backward:
dX = Q3(dY) Q4(W') with Q3 1x32 along C and Q4 32x1 along C; dW = Q5(dY)^T Q6(X') with Q5, Q6 32x1 along N.
With ``double_quant`` W' = Q2(W) and X' = Q1(X) (TetraJet), otherwise the full-precision W and X (Microscaling).
A quantizer set to None passes its tensor through unchanged.

Besides the quantizers, a recipe holds the Q-EMA decay (used when q2 rounds with "ema") and the configs of the
training-side methods registered with quantization.registry.register_method_config (``methods``; Q-Ramping, Dampen,
Freeze), written in YAML and ``to_dict`` under the method's name (``dampen: {...}``) and read with
``recipe.method_config(name)``. Instead of the six quantizers a recipe may hold the config of a registered Linear op
(``op``: Tseng et al., Wang et al., INT4), written under the op's name (``tseng: {...}``). This module imports no
method and no op; their modules register them and their named recipes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .mx.formats import check_rounding, check_scale_rule, get_format
from .registry import linear_op, linear_ops, method_config_name, method_configs, reserve_names

ROLES = ("q1", "q2", "q3", "q4", "q5", "q6")
ROLE_LAYOUTS = {"q1": "1x32", "q2": "1x32", "q3": "1x32", "q4": "32x1", "q5": "32x1", "q6": "32x1"}
FORWARD_ROLES = ("q1", "q2")
BACKWARD_ROLES = ("q3", "q4", "q5", "q6")


@dataclass(frozen=True)
class QuantizerConfig:
    """One block quantizer: element format, shared-scale rule and rounding (see quantization.quantize)."""

    fmt: str = "e2m1"
    scale_rule: str = "rceil"
    rounding: str = "nearest"

    def __post_init__(self) -> None:
        get_format(self.fmt)
        check_scale_rule(self.scale_rule)
        check_rounding(self.rounding)


def require(ok: bool, what: str, value: object, rule: str) -> None:
    """ValueError ``<what> must be <rule>, got <value>`` unless ``ok`` (how recipes and method configs check)."""
    if not ok:
        raise ValueError(f"{what} must be {rule}, got {value!r}")


@dataclass(frozen=True)
class _RecipeFields:
    """The fields of a Recipe (documented there), in a base class so that Recipe's own ``__init__`` can take an op's
    or a method's config under its name before the generated one sets them."""

    name: str
    q1: QuantizerConfig | None = None
    q2: QuantizerConfig | None = None
    q3: QuantizerConfig | None = None
    q4: QuantizerConfig | None = None
    q5: QuantizerConfig | None = None
    q6: QuantizerConfig | None = None
    double_quant: bool = True
    qema_beta: float = 0.998  # Q-EMA decay (the paper's default; Table 8 tunes it); used only when q2 rounds with "ema"
    methods: tuple = field(default=(), kw_only=True)  # registered methods' configs (quantization.registry), in order
    op: object | None = field(default=None, kw_only=True)  # a registered Linear op's config (quantization.registry)


def _combination_error(recipe: str, op_name: str, others: list[str]) -> ValueError:
    return ValueError(f"recipe {recipe!r}: {op_name} brings its own quantizers and combines with no other; also set: "
                      f"{', '.join(others)}")


def _op_keywords(recipe: str, kwargs: dict) -> dict:
    """``kwargs`` with the op configs given under their op's name (``tseng=TsengConfig()``) moved to ``op``."""
    ops = linear_ops()
    named = {key: kwargs.pop(key) for key in ops if key in kwargs}
    if not named:
        return kwargs
    for key, config in named.items():
        if config is not None and type(config) is not ops[key].config_cls:
            raise TypeError(f"recipe {recipe!r}: {key} must be a {ops[key].config_cls.__name__} or None, "
                            f"got {config!r}")
    configs = [config for config in (kwargs.get("op"), *named.values()) if config is not None]
    if len(configs) > 1:
        names = sorted((linear_op(config).name for config in configs), key=list(ops).index)
        raise _combination_error(recipe, names[0], names[1:])
    kwargs["op"] = configs[0] if configs else None
    return kwargs


def _plain(config: object | None) -> dict | None:
    return None if config is None else dataclasses.asdict(config)


def _method_keywords(recipe: str, kwargs: dict) -> dict:
    """``kwargs`` with the method configs given under their method's name (``dampen=DampenConfig()``, None to drop)
    merged into ``methods``, which then holds one config per method, in the registered order."""
    registered = method_configs()
    configs = {}
    for config in kwargs.get("methods", ()):
        try:
            name = method_config_name(config)
        except TypeError as error:
            raise TypeError(f"recipe {recipe!r}: methods: {error}") from None
        if name in configs:
            raise ValueError(f"recipe {recipe!r}: methods holds two configs of {name}")
        configs[name] = config
    for name in [key for key in registered if key in kwargs]:
        config = kwargs.pop(name)
        if config is not None and type(config) is not registered[name].config_cls:
            raise TypeError(f"recipe {recipe!r}: {name} must be a {registered[name].config_cls.__name__} or None, "
                            f"got {config!r}")
        configs[name] = config
    kwargs["methods"] = tuple(configs[name] for name in registered if configs.get(name) is not None)
    return kwargs


class Recipe(_RecipeFields):
    """Per-quantizer settings of a quantized Linear; ``None`` switches a quantizer off.

    ``op`` holds the config of a registered Linear op (quantization.registry: Tseng et al., Wang et al., INT4) that
    replaces the six quantizers and combines with no other setting. Under the op's name it is also an argument and
    an attribute: ``Recipe("t", tseng=TsengConfig())``; ``recipe.tseng`` is the config, or None when the recipe holds
    another op or none.

    ``methods`` holds the configs of registered training-side methods (Q-Ramping, Dampen, Freeze), each also an
    argument under the method's name: ``Recipe("t", q2=..., dampen=DampenConfig())``; ``recipe.method_config("dampen")``
    reads it (None when the recipe does not use the method). Every method acts on the quantized weights (needs q2).
    """

    def __init__(self, name: str, *args, **kwargs) -> None:
        super().__init__(name, *args, **_method_keywords(name, _op_keywords(name, kwargs)))
        self._check()

    def _check(self) -> None:
        for role in ROLES:
            config = getattr(self, role)
            if config is not None and not isinstance(config, QuantizerConfig):
                raise TypeError(f"recipe {self.name!r}: {role} must be a QuantizerConfig or None, got {config!r}")
            if config is not None and config.rounding == "ema" and role != "q2":
                raise ValueError(f"recipe {self.name!r}: rounding 'ema' (Q-EMA) acts on the weight quantizer q2 "
                                 f"only, not on {role}")
        require(0.0 < self.qema_beta < 1.0, f"recipe {self.name!r}: qema_beta", self.qema_beta, "in (0, 1)")
        for config in self.methods:
            if self.q2 is None:
                raise ValueError(f"recipe {self.name!r}: {method_config_name(config)} acts on quantized weights, but "
                                 f"the weight quantizer q2 is off")
        if self.op is not None:
            try:
                op_name = linear_op(self.op).name
            except TypeError as error:
                raise TypeError(f"recipe {self.name!r}: op: {error}") from None
            others = [role for role in ROLES if getattr(self, role) is not None]
            others += [method_config_name(config) for config in self.methods]
            if others:
                raise _combination_error(self.name, op_name, others)

    def __getattr__(self, name: str):
        """A registered op's name reads this recipe's config of that op (None if it holds another or none)."""
        op = linear_ops().get(name)
        if op is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self.op if type(self.op) is op.config_cls else None

    def method_config(self, name: str) -> object | None:
        """This recipe's config of the registered method ``name`` (``"dampen"``, ...), None if it does not use it;
        ValueError for a name no method has registered."""
        registered = method_configs()
        if name not in registered:
            raise ValueError(f"unknown method {name!r}; valid choices: {', '.join(registered)}")
        return next((c for c in self.methods if type(c) is registered[name].config_cls), None)

    def quantizer(self, role: str) -> QuantizerConfig | None:
        if role not in ROLES:
            raise ValueError(f"unknown quantizer {role!r}; valid choices: {', '.join(ROLES)}")
        return getattr(self, role)

    @property
    def uses_qema(self) -> bool:
        """Whether the weight quantizer q2 rounds with Q-EMA."""
        return self.q2 is not None and self.q2.rounding == "ema"

    @property
    def scheme(self) -> str | None:
        """The name of the registered op ("tseng", "wang", "int4", ...) that replaces the six quantizers, if any."""
        return None if self.op is None else linear_op(self.op).name

    @property
    def quantizes_anything(self) -> bool:
        return self.op is not None or any(getattr(self, role) is not None for role in ROLES)

    def replace(self, **changes) -> "Recipe":
        """A copy with ``changes``; giving the recipe's op under its name (``tseng=...``, None too) replaces it."""
        if self.scheme in changes:
            changes.setdefault("op", None)
        return dataclasses.replace(self, **changes)

    def only(self, *roles: str, name: str | None = None) -> "Recipe":
        """This recipe with every quantizer but ``roles`` switched off (the paper's Table 1)."""
        for role in roles:
            self.quantizer(role)
        changes = {role: None for role in ROLES if role not in roles}
        return self.replace(name=name or f"{self.name}_only_{'_'.join(roles)}", **changes)

    def to_dict(self) -> dict:
        """Plain data that ``from_dict`` reads back: the fields but ``methods`` and ``op``, then one key per
        registered method (in their order) and one per registered op (in registration order), each holding this
        recipe's config of it or None."""
        data = dataclasses.asdict(self)
        del data["methods"], data["op"]
        data.update({name: _plain(self.method_config(name)) for name in method_configs()})
        data.update({name: _plain(self.op if type(self.op) is op.config_cls else None)
                     for name, op in linear_ops().items()})
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        """Build a recipe from plain data (e.g. a YAML method file; an op's config under the op's name); unknown
        keys are rejected."""
        ops, methods = linear_ops(), method_configs()
        valid = {f.name for f in dataclasses.fields(cls) if f.name not in ("methods", "op")} | set(methods) | set(ops)
        unknown = set(data) - valid
        if unknown:
            raise ValueError(f"unknown recipe keys {sorted(unknown)}; valid keys: {', '.join(sorted(valid))}")
        fields = dict(data)
        nested = {**{role: QuantizerConfig for role in ROLES}, **{name: m.config_cls for name, m in methods.items()},
                  **{name: op.config_cls for name, op in ops.items()}}
        for key, config_cls in nested.items():
            config = fields.get(key)
            if isinstance(config, dict):
                valid_keys = {f.name for f in dataclasses.fields(config_cls)}
                bad = set(config) - valid_keys
                if bad:
                    raise ValueError(f"unknown keys {sorted(bad)} in {key}; valid keys: "
                                     f"{', '.join(sorted(valid_keys))}")
                fields[key] = config_cls(**config)
        return cls(**fields)


# An op may not take the name of a field or attribute of Recipe: each recipe key means one thing.
reserve_names({f.name for f in dataclasses.fields(Recipe)} | {n for n in dir(Recipe) if not n.startswith("_")})


def _tetrajet(name: str = "tetrajet", fwd_fmt: str = "e2m1", bwd_fmt: str = "e2m1", scale_rule: str = "rceil",
              backward_rounding: str = "stochastic", double_quant: bool = True) -> Recipe:
    """TetraJet's six quantizers with the given formats, scale rule and backward rounding.

    Only the dY quantizers Q3 and Q5 take the gradient format ``bwd_fmt``; Q4 and Q6 re-quantize the weight and
    the activation, so they keep the forward format (as the official code does for Table 7)."""
    forward = QuantizerConfig(fwd_fmt, scale_rule, "nearest")
    gradient = QuantizerConfig(bwd_fmt, scale_rule, backward_rounding)
    operand = QuantizerConfig(fwd_fmt, scale_rule, backward_rounding)
    return Recipe(name, q1=forward, q2=forward, q3=gradient, q4=operand, q5=gradient, q6=operand,
                  double_quant=double_quant)


def _build_registry() -> dict[str, Recipe]:
    tetrajet = _tetrajet()
    recipes = [
        Recipe("bf16"),
        _tetrajet("microscaling", scale_rule="floor", backward_rounding="nearest", double_quant=False),
        tetrajet,
    ]
    # Table 1: one quantizer at a time.
    recipes += [tetrajet.only(role, name=f"tetrajet_only_{role}") for role in ROLES]
    # Table 5: backward rounding x what the backward quantizes x scale rule.
    for rounding, rounding_tag in (("stochastic", "sr"), ("nearest", "det")):
        for double_quant, source_tag in ((True, "doubleq"), (False, "fullprec")):
            for rule in ("rceil", "floor"):
                recipes.append(_tetrajet(f"table5_{rounding_tag}_{source_tag}_{rule}", scale_rule=rule,
                                         backward_rounding=rounding, double_quant=double_quant))
    # Table 7: element format of activations & weights / of gradients.
    for fwd_fmt in ("e2m1", "e3m0"):
        for bwd_fmt in ("e2m1", "e3m0"):
            recipes.append(_tetrajet(f"table7_{fwd_fmt}_{bwd_fmt}", fwd_fmt=fwd_fmt, bwd_fmt=bwd_fmt))
    # Table 2: Q-EMA.
    recipes.append(tetrajet.replace(name="tetrajet_qema", q2=dataclasses.replace(tetrajet.q2, rounding="ema")))
    return {recipe.name: recipe for recipe in recipes}


# The named recipes; those of the methods (tetrajet_qramping, ...) and of other papers (tseng, wang, int4) are added
# by their own modules (register_recipe).
RECIPES: dict[str, Recipe] = _build_registry()


def register_recipe(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to RECIPES under its name (how a method module outside this file names its recipes); returns
    it. ValueError if the name is taken."""
    if recipe.name in RECIPES:
        raise ValueError(f"recipe name {recipe.name!r} is already registered")
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: "str | Recipe") -> Recipe:
    """The named recipe (``bf16``, ``microscaling``, ``tetrajet``, ...); a Recipe passes through unchanged."""
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid choices: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]
