"""Element formats (ExMy minifloats) and shared-scale rules, described as data.

A format is fully defined by its exponent and mantissa bit counts; everything the quantizers need (grid step per
binade, largest magnitude, 4-bit code layout) is derived here, so adding a format is one line in ``FORMATS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Rounding(IntEnum):
    """The rounding modes; a mode's name in lower case is its public name, its value the code the kernels take."""

    NEAREST = 0  # to nearest, ties away from zero
    EVEN = 1  # to nearest, ties to even
    STOCHASTIC = 2  # up with probability frac (counter-based hash of the element index and two seed words)
    EMA = 3  # Q-EMA: toward the grid neighbour nearer the EMA weight

    @classmethod
    def named(cls, name: str) -> "Rounding":
        """The mode of a public name (``"nearest"``, ``"even"``, ``"stochastic"``, ``"ema"``)."""
        return cls[name.upper()]


SCALE_RULES = ("rceil", "floor")
ROUNDINGS = tuple(mode.name.lower() for mode in Rounding)
LAYOUTS = ("1x32", "32x1")
BLOCK_SIZE = 32
# E8M0 shared exponent: clamped to [-127, 127], stored biased by 127; 255 marks a NaN block (OCP MX spec).
SCALE_EXP_MIN = -127
SCALE_EXP_MAX = 127
SCALE_BIAS = 127
SCALE_NAN = 255


@dataclass(frozen=True)
class ElementFormat:
    """A sign-magnitude minifloat with no Inf/NaN encodings (as in the OCP MX element types)."""

    name: str
    exp_bits: int
    man_bits: int

    @property
    def bias(self) -> int:
        return 2 ** (self.exp_bits - 1) - 1

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal binade; below it the grid continues with the same step (subnormals)."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest binade."""
        return 2**self.exp_bits - 1 - self.bias

    @property
    def max_value(self) -> float:
        return 2.0**self.emax * (2.0 - 2.0**-self.man_bits)

    @property
    def max_mantissa_field(self) -> int:
        """fp32 mantissa field of the largest significand 2 - 2^-m: an amax with a larger one needs the next scale."""
        return (1 << 23) - (1 << (23 - self.man_bits))

    @property
    def saturation_code(self) -> int:
        """Code of the largest grid value below 2^emax (one below the top binade's first code)."""
        return ((2**self.exp_bits - 1) << self.man_bits) - 1

    @property
    def saturation_value(self) -> float:
        """The largest grid value below 2^emax: where rceil saturates an element that would round to 2^emax in a
        block whose scale puts 2^emax at the output dtype's overflow (reference.magnitude_limit); 3 for E2M1."""
        return self.grid()[self.saturation_code]

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def max_code(self) -> int:
        """Largest magnitude code (sign bit excluded)."""
        return 2 ** (self.exp_bits + self.man_bits) - 1

    def grid(self) -> list[float]:
        """All non-negative representable magnitudes, ascending."""
        values = []
        for code in range(self.max_code + 1):
            field, mant = code >> self.man_bits, code & ((1 << self.man_bits) - 1)
            if field == 0:
                values.append(mant * 2.0 ** (self.emin - self.man_bits))
            else:
                values.append((2**self.man_bits + mant) * 2.0 ** (field - self.bias - self.man_bits))
        return values


FORMATS: dict[str, ElementFormat] = {
    f.name: f
    for f in (
        ElementFormat("e2m1", exp_bits=2, man_bits=1),  # MXFP4
        ElementFormat("e3m0", exp_bits=3, man_bits=0),  # the paper's Table 7 format ablation
        ElementFormat("e1m2", exp_bits=1, man_bits=2),
    )
}


def _check_choice(kind: str, value: object, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(sorted(choices))}")


def get_format(name: str) -> ElementFormat:
    """Look up an element format by name (e.g. ``"e2m1"``)."""
    _check_choice("element format", name, FORMATS)
    return FORMATS[name]


def check_scale_rule(name: str) -> str:
    _check_choice("scale rule", name, SCALE_RULES)
    return name


def check_rounding(name: str) -> str:
    _check_choice("rounding", name, ROUNDINGS)
    return name


def check_layout(name: str) -> str:
    _check_choice("layout", name, LAYOUTS)
    return name
