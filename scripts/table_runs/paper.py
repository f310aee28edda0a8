"""The paper's Tables 1-10 as data: which runs each row needs and the paper's numbers per column.

A row names a ``Run`` (method file, overrides) and its numbers, one per column; a column names a model (a key of the
profiles' model maps) and the quantity compared: "top1" (ImageNet-1K top-1, %), "r_q" or "r_y" (Table 3's rates of
change, last "oscillation" record). A row that is the same run as another table's row holds the same ``Run``, so both
resolve to one run directory and it trains once.
"""
from __future__ import annotations

from dataclasses import dataclass

DEIT_T, DEIT_S, DEIT_B, SWIN_T, SWIN_S = "deit_tiny", "deit_small", "deit_base", "swin_tiny", "swin_small"
MODEL_HEADERS = {DEIT_T: "DeiT-T", DEIT_S: "DeiT-S", DEIT_B: "DeiT-B", SWIN_T: "Swin-T", SWIN_S: "Swin-S"}


@dataclass(frozen=True)
class Run:
    """One training configuration apart from the model: ``method`` is a file under configs/methods (no .yaml);
    ``tuned``: use Table 8's per-model file configs/methods/tuned/<method>_<model>.yaml instead; ``monitor``: the
    oscillation monitor on (Table 3); ``overrides``: main.py ``--set`` values. ``label`` names its directories."""
    label: str
    method: str
    overrides: tuple[str, ...] = ()
    tuned: bool = False
    monitor: bool = False


@dataclass(frozen=True)
class Column:
    """One compared number per row: ``quantity`` of the runs of ``model``."""
    header: str
    model: str
    quantity: str = "top1"


@dataclass(frozen=True)
class Row:
    """One run of the table and the paper's numbers for it, in the table's column order."""
    run: Run
    description: str
    paper: tuple[float, ...]

    @property
    def label(self) -> str:
        return self.run.label


@dataclass(frozen=True)
class PaperTable:
    number: int
    title: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]


def _models(*models: str) -> tuple[Column, ...]:
    return tuple(Column(MODEL_HEADERS[model], model) for model in models)


def qema_beta(beta: str) -> Run:
    """TetraJet + Q-EMA with the given beta (Tables 8 and 9)."""
    name = f"tetrajet_qema_beta{beta}"
    return Run(name, "tetrajet_qema", (f"method.name={name}", f"method.recipe.qema_beta={beta}"))


def qramping_k(k1: int, k2: int) -> Run:
    """TetraJet + Q-Ramping with the given (k1, k2) (Table 10)."""
    name = f"tetrajet_qramping_k1_{k1}_k2_{k2}"
    return Run(name, "tetrajet_qramping", (f"method.name={name}", f"method.recipe.qramping.k1={k1}",
                                           f"method.recipe.qramping.k2={k2}"))


BF16 = Run("bf16", "bf16")
INT4 = Run("int4", "int4")
# Table 5's deterministic / full-precision X and W / OCP floor recipe is Microscaling, and its stochastic /
# double-Q / truncation-free recipe (like Table 7's E2M1 / E2M1 and Table 1's "all six") is TetraJet.
MICROSCALING = Run("microscaling", "microscaling")
TETRAJET = Run("tetrajet", "tetrajet")
QEMA = Run("tetrajet_qema", "tetrajet_qema", tuned=True)
QRAMPING = Run("tetrajet_qramping", "tetrajet_qramping", tuned=True)
DAMPEN = Run("tetrajet_dampen", "tetrajet_dampen")
FREEZE = Run("tetrajet_freeze", "tetrajet_freeze")
# Table 3's runs record oscillation metrics: in a profile without the monitor on for every run they are their own
# configurations (their own overrides, so their own directories), apart from Tables 2 and 4's.
MONITORED = {run: Run(run.label, run.method, run.overrides, run.tuned, monitor=True)
             for run in (TETRAJET, DAMPEN, QEMA, QRAMPING)}


def _ablation(name: str) -> Run:
    return Run(name, f"ablations/{name}")


ALL_MODELS = _models(DEIT_T, DEIT_S, DEIT_B, SWIN_T, SWIN_S)

TABLES: dict[int, PaperTable] = {table.number: table for table in (
    PaperTable(1, "one quantizer at a time", _models(DEIT_T, DEIT_S), (
        Row(BF16, "full precision", (63.73, 73.33)),
        Row(_ablation("tetrajet_only_q1"), "Q1 only", (61.50, 71.66)),
        Row(_ablation("tetrajet_only_q2"), "Q2 only", (62.77, 72.45)),
        Row(_ablation("tetrajet_only_q3"), "Q3 only", (63.46, 72.97)),
        Row(_ablation("tetrajet_only_q4"), "Q4 only", (63.37, 72.79)),
        Row(_ablation("tetrajet_only_q5"), "Q5 only", (63.81, 73.25)),
        Row(_ablation("tetrajet_only_q6"), "Q6 only", (63.78, 73.13)),
        Row(TETRAJET, "all six", (59.75, 71.03)))),
    PaperTable(2, "main results", ALL_MODELS, (
        Row(BF16, "full precision", (63.73, 73.33, 75.57, 78.35, 80.44)),
        Row(INT4, "INT4 per-tensor", (40.14, 60.07, 68.13, 74.22, 75.74)),
        Row(MICROSCALING, "Microscaling", (58.56, 70.10, 74.54, 76.87, 79.45)),
        Row(TETRAJET, "TetraJet", (59.75, 71.03, 74.91, 77.12, 79.51)),
        Row(QEMA, "TetraJet + Q-EMA", (60.00, 72.25, 77.32, 77.30, 79.74)),
        Row(QRAMPING, "TetraJet + Q-Ramping", (60.31, 71.32, 75.62, 77.33, 79.67)))),
    PaperTable(3, "rate of change at the end of training (DeiT-T)",
               (Column("r(W_Q)", DEIT_T, "r_q"), Column("r(Y), block at 3/4 depth", DEIT_T, "r_y")), (
        Row(MONITORED[TETRAJET], "TetraJet", (0.0045, 0.0401)),
        Row(MONITORED[DAMPEN], "+ Dampen", (0.0044, 0.0394)),
        Row(MONITORED[QEMA], "+ Q-EMA", (0.0018, 0.0251)),
        Row(MONITORED[QRAMPING], "+ Q-Ramping", (0.0028, 0.0318)))),
    PaperTable(4, "Dampen and Freeze", _models(DEIT_T, DEIT_S), (
        Row(TETRAJET, "TetraJet", (59.75, 71.03)),
        Row(DAMPEN, "+ Dampen", (59.75, 70.75)),
        Row(FREEZE, "+ Freeze", (16.45, 22.04)))),
    PaperTable(5, "backward rounding x what the backward quantizes x scale rule (DeiT-T)", _models(DEIT_T), (
        Row(TETRAJET, "stochastic, double-Q, truncation-free (= TetraJet)", (59.75,)),
        Row(_ablation("table5_sr_doubleq_floor"), "stochastic, double-Q, OCP", (59.18,)),
        Row(_ablation("table5_sr_fullprec_rceil"), "stochastic, full-precision X/W, truncation-free", (56.98,)),
        Row(_ablation("table5_sr_fullprec_floor"), "stochastic, full-precision X/W, OCP", (57.49,)),
        Row(_ablation("table5_det_doubleq_rceil"), "deterministic, double-Q, truncation-free", (58.60,)),
        Row(_ablation("table5_det_doubleq_floor"), "deterministic, double-Q, OCP", (59.02,)),
        Row(_ablation("table5_det_fullprec_rceil"), "deterministic, full-precision X/W, truncation-free", (58.40,)),
        Row(MICROSCALING, "deterministic, full-precision X/W, OCP (= Microscaling)", (58.56,)))),
    PaperTable(6, "ablation (DeiT-B)", _models(DEIT_B), (
        Row(TETRAJET, "TetraJet", (74.91,)),
        Row(Run("tetrajet_no_weight_q", "tetrajet_no_weight_q"), "without weight quantizer", (75.16,)),
        Row(Run("tetrajet_no_weight_act_q", "tetrajet_no_weight_act_q"), "without weight and activation quantizers",
            (75.86,)),
        Row(QEMA, "+ Q-EMA", (77.32,)),
        Row(QRAMPING, "+ Q-Ramping", (75.62,)))),
    PaperTable(7, "element formats, activations & weights / gradients (DeiT-T)", _models(DEIT_T), (
        Row(TETRAJET, "E2M1 / E2M1 (= TetraJet)", (59.75,)),
        Row(_ablation("table7_e2m1_e3m0"), "E2M1 / E3M0", (58.90,)),
        Row(_ablation("table7_e3m0_e2m1"), "E3M0 / E2M1", (54.21,)),
        Row(_ablation("table7_e3m0_e3m0"), "E3M0 / E3M0", (53.72,)))),
    PaperTable(8, "Q-EMA with the tuned and the default beta", ALL_MODELS, (
        Row(QEMA, "tuned beta 0.9983 / 0.9972 / 0.999 / 0.9975 / 0.998 (Table 2)",
            (60.00, 72.25, 77.32, 77.30, 79.74)),
        Row(qema_beta("0.998"), "default beta 0.998", (59.69, 71.51, 77.18, 77.23, 79.74)))),
    # DeiT-B's tuned beta is 0.999 and its tuned (k1, k2) is (16, 5): those rows are Table 2's runs.
    PaperTable(9, "Q-EMA beta sweep (DeiT-B)", _models(DEIT_B), tuple(
        Row(QEMA if beta == "0.999" else qema_beta(beta), f"beta {beta}", (acc,)) for beta, acc in (
            ("0.993", 75.39), ("0.995", 76.37), ("0.997", 77.23), ("0.998", 77.18), ("0.999", 77.32),
            ("0.9995", 77.30)))),
    PaperTable(10, "Q-Ramping (k1, k2) sweep (DeiT-B)", _models(DEIT_B), tuple(
        Row(QRAMPING if (k1, k2) == (16, 5) else qramping_k(k1, k2), f"k1 = {k1}, k2 = {k2}", (acc,))
        for k1, k2, acc in ((16, 3, 75.35), (16, 4, 75.33), (16, 5, 75.62), (16, 6, 74.96), (16, 7, 75.29),
                            (16, 8, 75.13), (8, 5, 75.19), (12, 5, 75.60), (20, 5, 74.85)))),
)}
