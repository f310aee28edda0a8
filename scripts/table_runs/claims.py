"""The paper's claims as data, and the verdict our runs give each.

A claim is one or more comparisons "A beats B" between two rows of a paper table: higher top-1, or lower where the
comparison says so (the rates of change, Table 1's sensitivity). Per comparison, over the finished seeds of each
side,

    d = mean_A - mean_B (mean_B - mean_A for "lower"), se = sqrt(var_A / n_A + var_B / n_B) (sample variances),

so d > 0 points the claim's way. A comparison holds when d >= 2 se and d >= the claim's margin (and d > 0), and
does not hold when d <= margin - 2 se (and d < margin): the gap is surely below what the claim says. A claim holds
when all its comparisons hold, does not hold when any does not, is "not run" while a side has fewer than two
finished seeds, and is inconclusive otherwise. A "no gain" claim (Dampen does not help) holds unless A beats B by
2 se.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from .paper import DEIT_T, TABLES, Row, Run

HOLDS, FAILS, INCONCLUSIVE, NOT_RUN = "holds", "does not hold", "inconclusive at this spread", "not run"
MIN_SEEDS = 2
Z = 2.0
BEATS, NO_GAIN = "beats", "no gain"


@dataclass(frozen=True)
class Comparison:
    """Row ``a`` beats row ``b`` of Table ``table`` (rows by label) in ``quantity``: higher, or lower if ``lower``."""
    table: int
    a: str
    b: str
    quantity: str = "top1"
    lower: bool = False

    def row(self, label: str) -> Row:
        """This table's row ``label``; an unknown label is an error naming the table's labels."""
        rows = TABLES[self.table].rows
        for row in rows:
            if row.label == label:
                return row
        raise ValueError(f"table {self.table} has no row {label!r}; rows: {', '.join(r.label for r in rows)}")

    def run(self, label: str) -> Run:
        """The ``Run`` of this table's row ``label``."""
        return self.row(label).run

    def paper(self, label: str, model: str) -> Optional[float]:
        """The paper's number for row ``label`` on ``model`` in this quantity, None if the table has no such
        column."""
        for column, value in zip(TABLES[self.table].columns, self.row(label).paper):
            if column.model == model and column.quantity == self.quantity:
                return value
        return None


@dataclass(frozen=True)
class Claim:
    """One claim of the paper: ``kind`` BEATS (every comparison must hold, by ``margin`` at least) or NO_GAIN (its
    one comparison's ``a`` must not beat ``b``)."""
    text: str
    comparisons: tuple[Comparison, ...]
    margin: float = 0.0
    kind: str = BEATS


@dataclass(frozen=True)
class Gap:
    """One comparison's numbers: our means, seed counts and the paper's numbers of both sides, d and se."""
    comparison: Comparison
    mean_a: float
    mean_b: float
    n_a: int
    n_b: int
    paper_a: Optional[float]
    paper_b: Optional[float]
    d: float
    se: float

    @property
    def ratio(self) -> float:
        """d / se (signed infinity when the seeds agree exactly and d is not 0)."""
        if self.se > 0:
            return self.d / self.se
        return math.copysign(math.inf, self.d) if self.d else 0.0


@dataclass(frozen=True)
class Verdict:
    """A claim, the model it was checked on, its verdict and its comparisons' gaps (none when not run; ``missing``
    names the runs short of seeds then, with their counts)."""
    claim: Claim
    model: str
    verdict: str
    gaps: tuple[Gap, ...] = ()
    missing: tuple[tuple[str, int], ...] = ()

    @property
    def deciding(self) -> Gap:
        """The comparison closest to failing: the smallest d / se."""
        return min(self.gaps, key=lambda gap: gap.ratio)


Values = Callable[[Run, str], Sequence[float]]  # (run, quantity) -> the finished seeds' values


def gap(comparison: Comparison, a: Sequence[float], b: Sequence[float], model: str) -> Gap:
    """The gap between two sides' seed values (two or more each)."""
    mean_a, mean_b = statistics.fmean(a), statistics.fmean(b)
    d = mean_b - mean_a if comparison.lower else mean_a - mean_b
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return Gap(comparison, mean_a, mean_b, len(a), len(b), comparison.paper(comparison.a, model),
               comparison.paper(comparison.b, model), d, se)


def comparison_verdict(gap: Gap, margin: float, kind: str) -> str:
    """One comparison's verdict under the module's rule."""
    d, bound = gap.d, Z * gap.se
    if kind == NO_GAIN:
        return FAILS if d >= bound and d > 0 else HOLDS
    if d >= max(bound, margin) and d > 0:
        return HOLDS
    if d <= margin - bound and d < margin:
        return FAILS
    return INCONCLUSIVE


def evaluate(claim: Claim, values: Values, model: str) -> Verdict:
    """The verdict of ``claim`` on ``model`` from ``values``, the finished seeds' numbers of a run."""
    sides = {}
    for comparison in claim.comparisons:
        for label in (comparison.a, comparison.b):
            sides[comparison, label] = list(values(comparison.run(label), comparison.quantity))
    missing = tuple(dict.fromkeys((label, len(seeds)) for (_, label), seeds in sides.items()
                                  if len(seeds) < MIN_SEEDS))
    if missing:
        return Verdict(claim, model, NOT_RUN, missing=missing)
    gaps = tuple(gap(c, sides[c, c.a], sides[c, c.b], model) for c in claim.comparisons)
    verdicts = [comparison_verdict(g, claim.margin, claim.kind) for g in gaps]
    if FAILS in verdicts:
        verdict = FAILS
    elif all(v == HOLDS for v in verdicts):
        verdict = HOLDS
    else:
        verdict = INCONCLUSIVE
    return Verdict(claim, model, verdict, gaps)


def claim_model(models: Sequence[str]) -> str:
    """The model the claims are checked on: DeiT-T (every claim's table has it), else a profile's first model."""
    return DEIT_T if DEIT_T in models else models[0]


def _rates(method: str, label: str) -> tuple[Claim, ...]:
    return tuple(Claim(f"{method} lowers {name} (Table 3)", (Comparison(3, label, "tetrajet", quantity, lower=True),))
                 for quantity, name in (("r_q", "r(W_Q)"), ("r_y", "r(Y)")))


CLAIMS: tuple[Claim, ...] = (
    Claim("Q1 is the most sensitive single quantizer (Table 1)",
          tuple(Comparison(1, "tetrajet_only_q1", f"tetrajet_only_q{k}", lower=True) for k in range(2, 7))),
    Claim("TetraJet beats Microscaling (Table 2)", (Comparison(2, "tetrajet", "microscaling"),)),
    Claim("Q-EMA beats TetraJet (Table 2)", (Comparison(2, "tetrajet_qema", "tetrajet"),)),
    Claim("Q-Ramping beats TetraJet (Table 2)", (Comparison(2, "tetrajet_qramping", "tetrajet"),)),
    Claim("INT4 per-tensor is far behind Microscaling, by 5 points or more (Table 2)",
          (Comparison(2, "microscaling", "int4"),), margin=5.0),
    *_rates("Q-EMA", "tetrajet_qema"),
    *_rates("Q-Ramping", "tetrajet_qramping"),
    Claim("Freeze collapses, 10 points or more below TetraJet (Table 4)",
          (Comparison(4, "tetrajet", "tetrajet_freeze"),), margin=10.0),
    Claim("Dampen does not help (Table 4)", (Comparison(4, "tetrajet_dampen", "tetrajet"),), kind=NO_GAIN),
    Claim("Double quantization with stochastic rounding beats a full-precision backward, both scale rules (Table 5)",
          (Comparison(5, "tetrajet", "table5_sr_fullprec_rceil"),
           Comparison(5, "table5_sr_doubleq_floor", "table5_sr_fullprec_floor"))),
    Claim("E3M0 hurts more for activations/weights than for gradients (Table 7)",
          (Comparison(7, "table7_e2m1_e3m0", "table7_e3m0_e2m1"),)),
    Claim("BF16 beats Microscaling (Table 2; the gap the proxy profile is chosen for)",
          (Comparison(2, "bf16", "microscaling"),)),
)
