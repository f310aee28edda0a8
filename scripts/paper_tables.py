"""The paper's Tables 1-10 as data (numbers from PAPER.md): rows are method labels as the launchers name the runs
(scripts/table*.sh: the run record's "method"), columns are models (the run record's "model") with the quantity
compared: "top1" (ImageNet-1K top-1, %), "r_q" or "r_y" (Table 3's rates of change, last "oscillation" record)."""
from __future__ import annotations

from dataclasses import dataclass

DEIT_T, DEIT_S, DEIT_B = "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"
SWIN_T, SWIN_S = "swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224"
MODEL_HEADERS = {DEIT_T: "DeiT-T", DEIT_S: "DeiT-S", DEIT_B: "DeiT-B", SWIN_T: "Swin-T", SWIN_S: "Swin-S"}


@dataclass(frozen=True)
class Column:
    """One compared number per row: ``quantity`` of the runs of ``model``."""
    header: str
    model: str
    quantity: str = "top1"


@dataclass(frozen=True)
class Row:
    """The paper's numbers of one method, in the table's column order."""
    label: str
    description: str
    paper: tuple[float, ...]


@dataclass(frozen=True)
class PaperTable:
    number: int
    title: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]


def _models(*models: str) -> tuple[Column, ...]:
    return tuple(Column(MODEL_HEADERS[model], model) for model in models)


ALL_MODELS = _models(DEIT_T, DEIT_S, DEIT_B, SWIN_T, SWIN_S)

TABLES: dict[int, PaperTable] = {table.number: table for table in (
    PaperTable(1, "one quantizer at a time", _models(DEIT_T, DEIT_S), (
        Row("bf16", "full precision", (63.73, 73.33)),
        Row("tetrajet_only_q1", "Q1 only", (61.50, 71.66)),
        Row("tetrajet_only_q2", "Q2 only", (62.77, 72.45)),
        Row("tetrajet_only_q3", "Q3 only", (63.46, 72.97)),
        Row("tetrajet_only_q4", "Q4 only", (63.37, 72.79)),
        Row("tetrajet_only_q5", "Q5 only", (63.81, 73.25)),
        Row("tetrajet_only_q6", "Q6 only", (63.78, 73.13)),
        Row("tetrajet", "all six", (59.75, 71.03)))),
    PaperTable(2, "main results, 90 epochs", ALL_MODELS, (
        Row("bf16", "full precision", (63.73, 73.33, 75.57, 78.35, 80.44)),
        Row("int4", "INT4 per-tensor", (40.14, 60.07, 68.13, 74.22, 75.74)),
        Row("microscaling", "Microscaling", (58.56, 70.10, 74.54, 76.87, 79.45)),
        Row("tetrajet", "TetraJet", (59.75, 71.03, 74.91, 77.12, 79.51)),
        Row("tetrajet_qema", "TetraJet + Q-EMA", (60.00, 72.25, 77.32, 77.30, 79.74)),
        Row("tetrajet_qramping", "TetraJet + Q-Ramping", (60.31, 71.32, 75.62, 77.33, 79.67)))),
    PaperTable(3, "rate of change at the end of training (DeiT-T)",
               (Column("r(W_Q)", DEIT_T, "r_q"), Column("r(Y), block 9", DEIT_T, "r_y")), (
        Row("tetrajet", "TetraJet", (0.0045, 0.0401)),
        Row("tetrajet_dampen", "+ Dampen", (0.0044, 0.0394)),
        Row("tetrajet_qema", "+ Q-EMA", (0.0018, 0.0251)),
        Row("tetrajet_qramping", "+ Q-Ramping", (0.0028, 0.0318)))),
    PaperTable(4, "Dampen and Freeze", _models(DEIT_T, DEIT_S), (
        Row("tetrajet", "TetraJet", (59.75, 71.03)),
        Row("tetrajet_dampen", "+ Dampen", (59.75, 70.75)),
        Row("tetrajet_freeze", "+ Freeze", (16.45, 22.04)))),
    PaperTable(5, "backward rounding x what the backward quantizes x scale rule (DeiT-T)", _models(DEIT_T), (
        Row("table5_sr_doubleq_rceil", "stochastic, double-Q, truncation-free", (59.75,)),
        Row("table5_sr_doubleq_floor", "stochastic, double-Q, OCP", (59.18,)),
        Row("table5_sr_fullprec_rceil", "stochastic, full-precision X/W, truncation-free", (56.98,)),
        Row("table5_sr_fullprec_floor", "stochastic, full-precision X/W, OCP", (57.49,)),
        Row("table5_det_doubleq_rceil", "deterministic, double-Q, truncation-free", (58.60,)),
        Row("table5_det_doubleq_floor", "deterministic, double-Q, OCP", (59.02,)),
        Row("table5_det_fullprec_rceil", "deterministic, full-precision X/W, truncation-free", (58.40,)),
        Row("table5_det_fullprec_floor", "deterministic, full-precision X/W, OCP (= Microscaling)", (58.56,)))),
    PaperTable(6, "ablation (DeiT-B)", _models(DEIT_B), (
        Row("tetrajet", "TetraJet", (74.91,)),
        Row("tetrajet_no_weight_q", "without weight quantizer", (75.16,)),
        Row("tetrajet_no_weight_act_q", "without weight and activation quantizers", (75.86,)),
        Row("tetrajet_qema", "+ Q-EMA", (77.32,)),
        Row("tetrajet_qramping", "+ Q-Ramping", (75.62,)))),
    PaperTable(7, "element formats, activations & weights / gradients (DeiT-T)", _models(DEIT_T), (
        Row("table7_e2m1_e2m1", "E2M1 / E2M1", (59.75,)),
        Row("table7_e2m1_e3m0", "E2M1 / E3M0", (58.90,)),
        Row("table7_e3m0_e2m1", "E3M0 / E2M1", (54.21,)),
        Row("table7_e3m0_e3m0", "E3M0 / E3M0", (53.72,)))),
    PaperTable(8, "Q-EMA with the tuned and the default beta", ALL_MODELS, (
        Row("tetrajet_qema", "tuned beta 0.9983 / 0.9972 / 0.999 / 0.9975 / 0.998 (Table 2)",
            (60.00, 72.25, 77.32, 77.30, 79.74)),
        Row("tetrajet_qema_beta0.998", "default beta 0.998", (59.69, 71.51, 77.18, 77.23, 79.74)))),
    PaperTable(9, "Q-EMA beta sweep (DeiT-B)", _models(DEIT_B), tuple(
        Row(f"tetrajet_qema_beta{beta}", f"beta {beta}", (acc,)) for beta, acc in (
            ("0.993", 75.39), ("0.995", 76.37), ("0.997", 77.23), ("0.998", 77.18), ("0.999", 77.32),
            ("0.9995", 77.30)))),
    PaperTable(10, "Q-Ramping (k1, k2) sweep (DeiT-B)", _models(DEIT_B), tuple(
        Row(f"tetrajet_qramping_k1_{k1}_k2_{k2}", f"k1 = {k1}, k2 = {k2}", (acc,)) for k1, k2, acc in (
            (16, 3, 75.35), (16, 4, 75.33), (16, 5, 75.62), (16, 6, 74.96), (16, 7, 75.29), (16, 8, 75.13),
            (8, 5, 75.19), (12, 5, 75.60), (20, 5, 74.85)))),
)}
