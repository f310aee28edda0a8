"""Named quantization recipes as typed data: what each of the six quantizers of a Linear does.

Y = X W^T with X: (N, D) tokens and W: (C, D). Forward: Q1 on X and Q2 on W (1x32 along D). Backward:
dX = Q3(dY) Q4(W') with Q3 1x32 along C and Q4 32x1 along C; dW = Q5(dY)^T Q6(X') with Q5, Q6 32x1 along N.
With ``double_quant`` W' = Q2(W) and X' = Q1(X) (TetraJet), otherwise the full-precision W and X (Microscaling).
A quantizer set to None passes its tensor through unchanged.

Besides the quantizers, a recipe names the training-side parts of a method: the Q-EMA decay (used when q2 rounds with
"ema"), Q-Ramping (``qramping``) and the two baselines of Nagel et al. 2022 (``dampen``, ``freeze``). They are data
here; quantization.ema, .ramping, .dampen and .freeze act on them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .formats import check_rounding, check_scale_rule, get_format
from .int4 import Int4Config
from .tseng import TsengConfig
from .wang import WangConfig

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
# Other 4-bit training recipes (Tseng et al., Wang et al., Table 2's INT4; docs/methods.md#baselines) that replace
# the six quantizers with an op of their own.
SCHEMES = {"tseng": TsengConfig, "wang": WangConfig, "int4": Int4Config}


@dataclass(frozen=True)
class Recipe:
    """Per-quantizer settings of a quantized Linear; ``None`` switches a quantizer off."""

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
    tseng: TsengConfig | None = None  # Tseng et al.: BF16 forward, MXFP4 backward with random Hadamard transforms
    wang: WangConfig | None = None  # Wang et al.: absmax E2M1 forward, DGE, outlier clamping
    int4: Int4Config | None = None  # Xi et al. 2023: INT4 per-tensor, Hadamard quantizer + leverage score sampling

    def __post_init__(self) -> None:
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
        for key, cls in SCHEMES.items():
            config = getattr(self, key)
            if config is not None and not isinstance(config, cls):
                raise TypeError(f"recipe {self.name!r}: {key} must be a {cls.__name__} or None, got {config!r}")
        schemes = [key for key in SCHEMES if getattr(self, key) is not None]
        others = [key for key in (*ROLES, *_NESTED) if getattr(self, key) is not None]
        if schemes and (len(schemes) > 1 or others):
            raise ValueError(f"recipe {self.name!r}: {schemes[0]} brings its own quantizers and combines with no "
                             f"other; also set: {', '.join([*schemes[1:], *others])}")

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
        """The other recipe ("tseng", "wang", "int4") whose Linear op replaces the six quantizers, if any."""
        return next((key for key in SCHEMES if getattr(self, key) is not None), None)

    @property
    def quantizes_anything(self) -> bool:
        return self.scheme is not None or any(getattr(self, role) is not None for role in ROLES)

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def only(self, *roles: str, name: str | None = None) -> "Recipe":
        """This recipe with every quantizer but ``roles`` switched off (the paper's Table 1)."""
        for role in roles:
            self.quantizer(role)
        changes = {role: None for role in ROLES if role not in roles}
        return self.replace(name=name or f"{self.name}_only_{'_'.join(roles)}", **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        """Build a recipe from plain data (e.g. a YAML method file); unknown keys are rejected."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - valid
        if unknown:
            raise ValueError(f"unknown recipe keys {sorted(unknown)}; valid keys: {', '.join(sorted(valid))}")
        fields = dict(data)
        nested = {**{role: QuantizerConfig for role in ROLES}, **_NESTED, **SCHEMES}
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
    # The other 4-bit training recipes (docs/methods.md#baselines).
    recipes += [Recipe("tseng", tseng=TsengConfig()), Recipe("wang", wang=WangConfig()),
                Recipe("int4", int4=Int4Config())]
    return {recipe.name: recipe for recipe in recipes}


RECIPES: dict[str, Recipe] = _build_registry()


def get_recipe(name: "str | Recipe") -> Recipe:
    """The named recipe (``bf16``, ``microscaling``, ``tetrajet``, ...); a Recipe passes through unchanged."""
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid choices: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]
