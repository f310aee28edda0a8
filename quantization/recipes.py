"""Named quantization recipes as typed data: what each of the six quantizers of a Linear does.

Y = X W^T with X: (N, D) tokens and W: (C, D). Forward: Q1 on X and Q2 on W (1x32 along D). Backward:
dX = Q3(dY) Q4(W') with Q3 1x32 along C and Q4 32x1 along C; dW = Q5(dY)^T Q6(X') with Q5, Q6 32x1 along N.
With ``double_quant`` W' = Q2(W) and X' = Q1(X) (TetraJet), otherwise the full-precision W and X (Microscaling).
A quantizer set to None passes its tensor through unchanged.

Besides the quantizers, a recipe names the training-side parts of a method: the Q-EMA decay (used when q2 rounds with
"ema"), Q-Ramping (``qramping``) and the two baselines of Nagel et al. 2022 (``dampen``, ``freeze``). They are data
here; quantization.ema, .ramping, .dampen and .freeze act on them. Instead of the six quantizers a recipe may hold
the config of a registered Linear op (``op``, quantization.registry: Tseng et al., Wang et al., INT4), written in
YAML and ``to_dict`` under the op's name (``tseng: {...}``); this module imports none of them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .mx.formats import check_rounding, check_scale_rule, get_format
from .registry import linear_op, linear_ops, reserve_names

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


def _require(ok: bool, what: str, value: object, rule: str) -> None:
    if not ok:
        raise ValueError(f"{what} must be {rule}, got {value!r}")


def cosine_anneal(start: float, final: float, progress: float, anneal_start: float = 0.0) -> float:
    """``start`` until ``anneal_start`` (a fraction of training), then a cosine from ``start`` to ``final`` at
    progress 1 (the schedule Nagel et al. 2022 use for the dampening weight and the freezing threshold)."""
    if progress <= anneal_start:
        return start
    t = min((progress - anneal_start) / (1.0 - anneal_start), 1.0)
    return final + 0.5 * (start - final) * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class QRampingConfig:
    """Q-Ramping (docs/methods.md#q-ramping): every ``interval`` steps (None: at each epoch start) ``calib_steps``
    plain-AdamW steps measure each weight's oscillation ratio R_w; its update period becomes
    k2 * floor(R_w / k1) + 1."""

    k1: float = 16.0
    k2: int = 5
    calib_steps: int = 30
    interval: int | None = None

    def __post_init__(self) -> None:
        _require(self.k1 > 0, "qramping.k1", self.k1, "> 0")
        _require(isinstance(self.k2, int) and self.k2 >= 0, "qramping.k2", self.k2, "an integer >= 0")
        _require(isinstance(self.calib_steps, int) and self.calib_steps >= 1, "qramping.calib_steps",
                 self.calib_steps, "an integer >= 1")
        _require(self.interval is None or (isinstance(self.interval, int) and self.interval >= 1),
                 "qramping.interval", self.interval, "null (each epoch) or an integer >= 1")


DAMPEN_AGGREGATIONS = ("kernel_mean", "mean", "sum")


@dataclass(frozen=True)
class DampenConfig:
    """Oscillation dampening (Nagel et al. 2022): loss weight * sum over layers of (1 / in_features) sum (sg(Q(W)) -
    clip(W))^2 (``aggregation``: ``kernel_mean``, as their released scripts run; ``mean`` or ``sum`` otherwise), the
    weight held at ``start`` until ``anneal_start`` (a fraction of training), then a cosine to ``final`` (their
    defaults: 0 -> 0.1 from 25%)."""

    start: float = 0.0
    final: float = 0.1
    anneal_start: float = 0.25
    aggregation: str = "kernel_mean"

    def __post_init__(self) -> None:
        _require(self.start >= 0 and self.final >= 0, "dampen.start/final", (self.start, self.final), ">= 0")
        _require(0.0 <= self.anneal_start < 1.0, "dampen.anneal_start", self.anneal_start, "in [0, 1)")
        _require(self.aggregation in DAMPEN_AGGREGATIONS, "dampen.aggregation", self.aggregation,
                 f"one of {', '.join(DAMPEN_AGGREGATIONS)}")

    def weight_at(self, progress: float) -> float:
        """The loss weight at ``progress`` (fraction of all training steps done, in [0, 1])."""
        return cosine_anneal(self.start, self.final, progress, self.anneal_start)


@dataclass(frozen=True)
class FreezeConfig:
    """Iterative weight freezing (Nagel et al. 2022): a weight whose oscillation frequency (EMA with ``momentum`` of
    grid flips that reverse the previous flip) exceeds the threshold is frozen; the threshold anneals by a cosine
    from ``threshold_start`` to ``threshold_final`` (their 4-bit settings: 0.1 -> 0.01, momentum 0.01)."""

    momentum: float = 0.01
    threshold_start: float = 0.1
    threshold_final: float = 0.01
    anneal_start: float = 0.0

    def __post_init__(self) -> None:
        _require(0.0 < self.momentum <= 1.0, "freeze.momentum", self.momentum, "in (0, 1]")
        _require(self.threshold_start > 0 and self.threshold_final > 0, "freeze.threshold_start/final",
                 (self.threshold_start, self.threshold_final), "> 0")
        _require(0.0 <= self.anneal_start < 1.0, "freeze.anneal_start", self.anneal_start, "in [0, 1)")

    def threshold_at(self, progress: float) -> float:
        """The freezing threshold at ``progress`` (fraction of all training steps done, in [0, 1])."""
        return cosine_anneal(self.threshold_start, self.threshold_final, progress, self.anneal_start)


# Fields of Recipe that hold a nested config, and its class (for from_dict).
_NESTED = {"qramping": QRampingConfig, "dampen": DampenConfig, "freeze": FreezeConfig}


@dataclass(frozen=True)
class _RecipeFields:
    """The fields of a Recipe (documented there), in a base class so that Recipe's own ``__init__`` can take an op's
    config under the op's name before the generated one sets them."""

    name: str
    q1: QuantizerConfig | None = None
    q2: QuantizerConfig | None = None
    q3: QuantizerConfig | None = None
    q4: QuantizerConfig | None = None
    q5: QuantizerConfig | None = None
    q6: QuantizerConfig | None = None
    double_quant: bool = True
    qema_beta: float = 0.998  # Q-EMA decay (the paper's default; Table 8 tunes it); used only when q2 rounds with "ema"
    qramping: QRampingConfig | None = None
    dampen: DampenConfig | None = None
    freeze: FreezeConfig | None = None
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


class Recipe(_RecipeFields):
    """Per-quantizer settings of a quantized Linear; ``None`` switches a quantizer off.

    ``op`` holds the config of a registered Linear op (quantization.registry: Tseng et al., Wang et al., INT4) that
    replaces the six quantizers and combines with no other setting. Under the op's name it is also an argument and
    an attribute: ``Recipe("t", tseng=TsengConfig())``; ``recipe.tseng`` is the config, or None when the recipe holds
    another op or none.
    """

    def __init__(self, name: str, *args, **kwargs) -> None:
        super().__init__(name, *args, **_op_keywords(name, kwargs))
        self._check()

    def _check(self) -> None:
        for role in ROLES:
            config = getattr(self, role)
            if config is not None and not isinstance(config, QuantizerConfig):
                raise TypeError(f"recipe {self.name!r}: {role} must be a QuantizerConfig or None, got {config!r}")
            if config is not None and config.rounding == "ema" and role != "q2":
                raise ValueError(f"recipe {self.name!r}: rounding 'ema' (Q-EMA) acts on the weight quantizer q2 "
                                 f"only, not on {role}")
        _require(0.0 < self.qema_beta < 1.0, f"recipe {self.name!r}: qema_beta", self.qema_beta, "in (0, 1)")
        for key, cls in _NESTED.items():
            config = getattr(self, key)
            if config is not None and not isinstance(config, cls):
                raise TypeError(f"recipe {self.name!r}: {key} must be a {cls.__name__} or None, got {config!r}")
            if config is not None and self.q2 is None:
                raise ValueError(f"recipe {self.name!r}: {key} acts on quantized weights, but the weight quantizer "
                                 f"q2 is off")
        if self.op is not None:
            try:
                op_name = linear_op(self.op).name
            except TypeError as error:
                raise TypeError(f"recipe {self.name!r}: op: {error}") from None
            others = [key for key in (*ROLES, *_NESTED) if getattr(self, key) is not None]
            if others:
                raise _combination_error(self.name, op_name, others)

    def __getattr__(self, name: str):
        """A registered op's name reads this recipe's config of that op (None if it holds another or none)."""
        op = linear_ops().get(name)
        if op is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self.op if type(self.op) is op.config_cls else None

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
        """Plain data that ``from_dict`` reads back: the fields but ``op``, then one key per registered op (in
        registration order) holding this recipe's op config under its name and None under the others."""
        data = dataclasses.asdict(self)
        config = data.pop("op")
        data.update({name: config if type(self.op) is op.config_cls else None for name, op in linear_ops().items()})
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        """Build a recipe from plain data (e.g. a YAML method file; an op's config under the op's name); unknown
        keys are rejected."""
        ops = linear_ops()
        valid = {f.name for f in dataclasses.fields(cls) if f.name != "op"} | set(ops)
        unknown = set(data) - valid
        if unknown:
            raise ValueError(f"unknown recipe keys {sorted(unknown)}; valid keys: {', '.join(sorted(valid))}")
        fields = dict(data)
        nested = {**{role: QuantizerConfig for role in ROLES}, **_NESTED,
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
    # Table 2 (Q-EMA, Q-Ramping) and Tables 3-4 (the oscillation baselines of Nagel et al. 2022).
    recipes += [
        tetrajet.replace(name="tetrajet_qema", q2=dataclasses.replace(tetrajet.q2, rounding="ema")),
        tetrajet.replace(name="tetrajet_qramping", qramping=QRampingConfig()),
        tetrajet.replace(name="tetrajet_dampen", dampen=DampenConfig()),
        tetrajet.replace(name="tetrajet_freeze", freeze=FreezeConfig()),
    ]
    return {recipe.name: recipe for recipe in recipes}


# The named recipes; those of other papers (tseng, wang, int4) are added by their own modules (register_recipe).
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
