"""Named quantization recipes as typed data: what each of the six quantizers of a Linear does.

Y = X W^T with X: (N, D) tokens and W: (C, D). Forward: Q1 on X and Q2 on W (1x32 along D). Backward:
dX = Q3(dY) Q4(W') with Q3 1x32 along C and Q4 32x1 along C; dW = Q5(dY)^T Q6(X') with Q5, Q6 32x1 along N.
With ``double_quant`` W' = Q2(W) and X' = Q1(X) (TetraJet), otherwise the full-precision W and X (Microscaling).
A quantizer set to None passes its tensor through unchanged.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .formats import check_rounding, check_scale_rule, get_format

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

    def __post_init__(self) -> None:
        for role in ROLES:
            config = getattr(self, role)
            if config is not None and not isinstance(config, QuantizerConfig):
                raise TypeError(f"recipe {self.name!r}: {role} must be a QuantizerConfig or None, got {config!r}")
            if config is not None and config.rounding == "ema" and role != "q2":
                raise ValueError(f"recipe {self.name!r}: rounding 'ema' (Q-EMA) acts on the weight quantizer q2 "
                                 f"only, not on {role}")

    def quantizer(self, role: str) -> QuantizerConfig | None:
        if role not in ROLES:
            raise ValueError(f"unknown quantizer {role!r}; valid choices: {', '.join(ROLES)}")
        return getattr(self, role)

    @property
    def quantizes_anything(self) -> bool:
        return any(getattr(self, role) is not None for role in ROLES)

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def only(self, *roles: str, name: str | None = None) -> "Recipe":
        """This recipe with every quantizer but ``roles`` switched off (PAPER.md Table 1)."""
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
        qvalid = {f.name for f in dataclasses.fields(QuantizerConfig)}
        for role in ROLES:
            config = fields.get(role)
            if isinstance(config, dict):
                bad = set(config) - qvalid
                if bad:
                    raise ValueError(f"unknown keys {sorted(bad)} in {role}; valid keys: {', '.join(sorted(qvalid))}")
                fields[role] = QuantizerConfig(**config)
        return cls(**fields)


def _uniform(name: str, forward: QuantizerConfig, backward: QuantizerConfig, double_quant: bool) -> Recipe:
    return Recipe(name, forward, forward, backward, backward, backward, backward, double_quant=double_quant)


def _tetrajet(name: str = "tetrajet", fwd_fmt: str = "e2m1", bwd_fmt: str = "e2m1", scale_rule: str = "rceil",
              backward_rounding: str = "stochastic", double_quant: bool = True) -> Recipe:
    return _uniform(name, QuantizerConfig(fwd_fmt, scale_rule, "nearest"),
                    QuantizerConfig(bwd_fmt, scale_rule, backward_rounding), double_quant)


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
    return {recipe.name: recipe for recipe in recipes}


RECIPES: dict[str, Recipe] = _build_registry()


def get_recipe(name: "str | Recipe") -> Recipe:
    """The named recipe (``bf16``, ``microscaling``, ``tetrajet``, ...); a Recipe passes through unchanged."""
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid choices: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]
