"""scripts/table_runs/claims.py: the verdict rule (2 se, margins, compound and "no gain" claims) on fixture seed
values, and the claims' data against the paper's tables."""
import math

import pytest

from table_runs import CLAIMS, TABLES, claim_model, evaluate
from table_runs.claims import FAILS, HOLDS, INCONCLUSIVE, NOT_RUN, Comparison
from table_runs.paper import DEIT_S, DEIT_T


def claim(start):
    """The one claim whose text starts with ``start``."""
    (found,) = [c for c in CLAIMS if c.text.startswith(start)]
    return found


def verdict(start, **seeds):
    """The verdict of a claim given each label's seed values (top-1 unless the key is label__quantity)."""
    data = {tuple(key.split("__")) if "__" in key else (key, "top1"): values for key, values in seeds.items()}
    return evaluate(claim(start), lambda run, quantity: data.get((run.label, quantity), []), DEIT_T)


def shifted(values, by):
    return [v + by for v in values]


BASE = [70.0, 71.0, 72.0]  # sample variance 1: se of two such sides is sqrt(2/3)
SE = math.sqrt(2 / 3)


def test_gap_numbers_and_the_three_verdicts():
    holds = verdict("TetraJet beats Microscaling", tetrajet=shifted(BASE, 10), microscaling=BASE)
    assert holds.verdict == HOLDS
    gap = holds.deciding
    assert (gap.mean_a, gap.mean_b, gap.n_a, gap.n_b) == (81.0, 71.0, 3, 3)
    assert (gap.paper_a, gap.paper_b) == (59.75, 58.56)
    assert gap.d == pytest.approx(10.0) and gap.se == pytest.approx(SE) and gap.ratio == pytest.approx(10 / SE)
    assert verdict("TetraJet beats Microscaling", tetrajet=BASE, microscaling=shifted(BASE, 10)).verdict == FAILS
    assert verdict("TetraJet beats Microscaling", tetrajet=shifted(BASE, 0.5),
                   microscaling=BASE).verdict == INCONCLUSIVE
    # just above and just below 2 se
    assert verdict("Q-EMA beats", tetrajet_qema=shifted(BASE, 2.01 * SE), tetrajet=BASE).verdict == HOLDS
    assert verdict("Q-EMA beats", tetrajet_qema=shifted(BASE, 1.99 * SE), tetrajet=BASE).verdict == INCONCLUSIVE
    assert verdict("Q-EMA beats", tetrajet_qema=shifted(BASE, -2.01 * SE), tetrajet=BASE).verdict == FAILS


def test_unequal_seed_counts_use_each_sides_variance():
    gap = verdict("BF16 beats", bf16=[80.0, 82.0], microscaling=[70.0, 71.0, 72.0, 73.0, 74.0]).deciding
    assert gap.se == pytest.approx(math.sqrt(2.0 / 2 + 2.5 / 5))
    assert gap.d == pytest.approx(9.0)


def test_not_run_needs_two_finished_seeds_per_side():
    result = verdict("TetraJet beats Microscaling", tetrajet=[80.0], microscaling=BASE)
    assert result.verdict == NOT_RUN and result.gaps == () and result.missing == (("tetrajet", 1),)
    assert verdict("TetraJet beats Microscaling", tetrajet=BASE).missing == (("microscaling", 0),)


def test_rates_are_better_lower():
    lower = verdict("Q-EMA lowers r(W_Q)", tetrajet_qema__r_q=[0.0018, 0.0019, 0.0020],
                    tetrajet__r_q=[0.0044, 0.0045, 0.0046])
    assert lower.verdict == HOLDS and lower.deciding.d == pytest.approx(0.0026)
    assert lower.deciding.paper_a == 0.0018 and lower.deciding.paper_b == 0.0045
    higher = verdict("Q-Ramping lowers r(Y)", tetrajet_qramping__r_y=[0.09, 0.091, 0.092],
                     tetrajet__r_y=[0.07, 0.071, 0.072])
    assert higher.verdict == FAILS and higher.deciding.paper_a == 0.0318
    assert verdict("Q-Ramping lowers r(Y)", tetrajet_qramping__r_y=BASE).verdict == NOT_RUN  # top-1 is not r(Y)


@pytest.mark.parametrize("gap, spread, expected", [
    (20.0, [0.0, 0.1, 0.2], HOLDS),  # far behind
    (3.0, [0.0, 0.1, 0.2], FAILS),  # clearly behind, but by less than 5 points
    (4.5, [0.0, 0.5, 1.0], INCONCLUSIVE),  # below 5 points by less than 2 se
    (6.0, [0.0, 5.0, 10.0], INCONCLUSIVE),  # over 5 points but not 2 se
])
def test_far_behind_needs_five_points(gap, spread, expected):
    assert verdict("INT4 per-tensor is far behind", microscaling=shifted(spread, 60 + gap),
                   int4=shifted(spread, 60)).verdict == expected


def test_freeze_collapses_needs_ten_points():
    assert verdict("Freeze collapses", tetrajet=shifted(BASE, 50), tetrajet_freeze=BASE).verdict == HOLDS
    assert verdict("Freeze collapses", tetrajet=shifted(BASE, 8), tetrajet_freeze=BASE).verdict == FAILS


def test_dampen_does_not_help_unless_it_beats_tetrajet_by_two_se():
    assert verdict("Dampen", tetrajet_dampen=shifted(BASE, 3), tetrajet=BASE).verdict == FAILS
    assert verdict("Dampen", tetrajet_dampen=shifted(BASE, 1), tetrajet=BASE).verdict == HOLDS  # within 2 se
    assert verdict("Dampen", tetrajet_dampen=shifted(BASE, -3), tetrajet=BASE).verdict == HOLDS
    assert verdict("Dampen", tetrajet_dampen=BASE).verdict == NOT_RUN


def table5(rceil_gap, floor_gap, floor_seeds=BASE):
    return verdict("Double quantization", tetrajet=shifted(BASE, rceil_gap), table5_sr_fullprec_rceil=BASE,
                   table5_sr_doubleq_floor=shifted(floor_seeds, floor_gap), table5_sr_fullprec_floor=floor_seeds)


def test_table5_needs_both_scale_rules():
    assert table5(3.0, 3.0).verdict == HOLDS
    assert table5(3.0, 0.5).verdict == INCONCLUSIVE
    assert table5(3.0, -3.0).verdict == FAILS
    assert table5(0.5, -3.0).verdict == FAILS
    assert table5(3.0, 3.0, floor_seeds=[70.0]).verdict == NOT_RUN
    closest = table5(3.0, 0.5).deciding
    assert (closest.comparison.a, closest.comparison.b) == ("table5_sr_doubleq_floor", "table5_sr_fullprec_floor")


def test_q1_must_be_below_every_other_single_quantizer():
    others = {f"tetrajet_only_q{k}": shifted(BASE, 5 + k) for k in range(2, 7)}
    assert verdict("Q1 is the most", tetrajet_only_q1=BASE, **others).verdict == HOLDS
    close = {**others, "tetrajet_only_q4": shifted(BASE, 0.5)}
    result = verdict("Q1 is the most", tetrajet_only_q1=BASE, **close)
    assert result.verdict == INCONCLUSIVE and result.deciding.comparison.b == "tetrajet_only_q4"
    lower = {**others, "tetrajet_only_q6": shifted(BASE, -4)}
    assert verdict("Q1 is the most", tetrajet_only_q1=BASE, **lower).verdict == FAILS
    assert verdict("Q1 is the most", tetrajet_only_q1=BASE, **{**others, "tetrajet_only_q5": []}).verdict == NOT_RUN


def test_e3m0_claim_and_the_claims_data():
    assert verdict("E3M0 hurts", table7_e2m1_e3m0=shifted(BASE, 4), table7_e3m0_e2m1=BASE).verdict == HOLDS
    assert len(CLAIMS) == 14 and len({c.text for c in CLAIMS}) == 14
    for each in CLAIMS:
        for comparison in each.comparisons:
            assert comparison.paper(comparison.a, DEIT_T) is not None
            assert comparison.paper(comparison.b, DEIT_T) is not None
            assert comparison.run(comparison.a) in {row.run for row in TABLES[comparison.table].rows}
    with pytest.raises(ValueError, match="table 2 has no row 'nope'; rows: bf16, int4"):
        Comparison(2, "nope", "bf16").run("nope")


def test_claim_model():
    assert claim_model([DEIT_S, DEIT_T]) == DEIT_T
    assert claim_model([DEIT_S]) == DEIT_S
