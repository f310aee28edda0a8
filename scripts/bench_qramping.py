"""Benchmark Q-Ramping on a CUDA GPU: the QRampingAdamW step against torch's fused AdamW, and the calibration's cost.

1. Optimizer step on DeiT-S parameters (timm deit_small_patch16_224, pretrained=False, timm's weight-decay groups),
   median time with triton.testing.do_bench, as a ratio to torch.optim.AdamW(fused=True) measured in the same run:
   no periods set (torch's own step), and periods set on every block Linear weight (the Triton kernel; 97% of the
   elements at period 1, 3% at periods 6..31, as Q-Ramping assigns them), plus foreach AdamW for comparison.
2. Correctness on the GPU: the kernel against the torch reference (``backend="torch"``) over 12 steps with mixed
   periods, and all-ones periods against fused AdamW (largest difference relative to each tensor's largest value;
   both should be around 1e-7, rounding differences only).
3. Calibration: one TetraJet + Q-Ramping DeiT-S training step (bf16 autocast, synthetic batch) and one
   QRampingCalibrator.calibrate (T0 steps + snapshot, measurement, restore); its share of an epoch of
   ``--steps-per-epoch`` steps (ImageNet, 4 GPUs x 256: 1251).

Usage: python scripts/bench_qramping.py [--batch 256] [--steps-per-epoch 1251] [--skip-calibration] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import timm
import torch
import triton.testing
from timm.optim import param_groups_weight_decay
from torch import nn

from quantization import QLinear, QRampingAdamW, QRampingCalibrator, get_recipe
from training import rewound

HYPER = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)


def bench_ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def deit_small(recipe: str | None = None) -> nn.Module:
    """DeiT-S on the GPU; with ``recipe``, its block Linears swapped for QLinear (as the training pipeline does)."""
    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", pretrained=False)
    if recipe is not None:
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Linear) and "blocks" in name.split(".")[:-1]:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, QLinear.from_linear(module, recipe))
    return model.cuda()


def block_weights(model: nn.Module) -> list[nn.Parameter]:
    return [m.weight for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and "blocks" in n.split(".")[:-1]]


def realistic_periods(weights: list[torch.Tensor], seed: int = 0) -> dict:
    g = torch.Generator(device="cuda").manual_seed(seed)
    periods = {}
    for w in weights:
        ramped = torch.rand(w.shape, generator=g, device="cuda") < 0.03
        slow = 5 * torch.randint(1, 7, w.shape, generator=g, device="cuda") + 1
        periods[w] = torch.where(ramped, slow, torch.ones_like(slow))
    return periods


def with_grads(model: nn.Module) -> nn.Module:
    g = torch.Generator(device="cuda").manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g, device="cuda") * 1e-3
    return model


def step_rows() -> list[dict]:
    rows = []
    baseline = with_grads(deit_small())
    fused = torch.optim.AdamW(param_groups_weight_decay(baseline, 0.05), **HYPER, fused=True)
    fused_ms = bench_ms(fused.step)
    rows.append(dict(optimizer="torch AdamW fused=True", ms=fused_ms, ratio=1.0))
    model = with_grads(deit_small())
    foreach = torch.optim.AdamW(param_groups_weight_decay(model, 0.05), **HYPER, foreach=True)
    rows.append(dict(optimizer="torch AdamW foreach=True", ms=bench_ms(foreach.step)))
    model = with_grads(deit_small())
    ours = QRampingAdamW(param_groups_weight_decay(model, 0.05), **HYPER, fused=True)
    rows.append(dict(optimizer="QRampingAdamW, no periods", ms=bench_ms(ours.step)))
    ours.set_update_periods(realistic_periods(block_weights(model)))
    rows.append(dict(optimizer="QRampingAdamW, periods on block weights (Triton)", ms=bench_ms(ours.step)))
    for row in rows:
        row["ratio"] = row["ms"] / fused_ms
    n = sum(p.numel() for p in model.parameters())
    ramped = sum(p.numel() for p in block_weights(model))
    print(f"DeiT-S: {n / 1e6:.1f}M parameters, {ramped / 1e6:.1f}M in block Linear weights")
    return rows


def correctness() -> dict:
    """Max relative differences: kernel vs torch reference (mixed periods), all-ones kernel vs fused AdamW."""
    result = {}
    models = [with_grads(deit_small()) for _ in range(2)]
    optimizers = [QRampingAdamW(m.parameters(), **HYPER, weight_decay=0.05, backend=b)
                  for m, b in zip(models, ("triton", "torch"))]
    for model, optimizer in zip(models, optimizers):
        optimizer.set_update_periods(realistic_periods(block_weights(model)))
    for _ in range(12):
        for optimizer in optimizers:
            optimizer.step()
    result["kernel_vs_reference_mixed"] = max_rel(block_weights(models[0]), block_weights(models[1]))
    ones = with_grads(deit_small())
    ref = with_grads(deit_small())
    ours = QRampingAdamW(ones.parameters(), **HYPER, weight_decay=0.05)
    ours.set_update_periods({w: torch.ones_like(w, dtype=torch.int32) for w in block_weights(ones)})
    theirs = torch.optim.AdamW(ref.parameters(), **HYPER, weight_decay=0.05, fused=True)
    for _ in range(12):
        ours.step()
        theirs.step()
    result["kernel_all_ones_vs_fused_adamw"] = max_rel(block_weights(ones), block_weights(ref))
    return result


@torch.no_grad()
def max_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest |a - b| of a tensor relative to the tensor's largest |b|, over the tensors."""
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b))


def calibration_row(batch: int, steps_per_epoch: int, calib_steps: int) -> dict:
    model = deit_small("tetrajet_qramping")
    optimizer = QRampingAdamW(param_groups_weight_decay(model, 0.05), **HYPER, fused=True)
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    y = torch.randint(0, 1000, (batch,), device="cuda")

    def train_step(_: int = 0) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()

    for _ in range(3):
        train_step()
    torch.cuda.synchronize()
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        train_step()
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / reps
    config = get_recipe("tetrajet_qramping").method_config("qramping")
    calibrator = QRampingCalibrator(model, optimizer, steps_per_epoch, replace(config, calib_steps=calib_steps),
                                    amp_dtype=torch.bfloat16)
    record = calibrator.calibrate(train_step, rewind=lambda: rewound([model, optimizer]))
    epoch_s = steps_per_epoch * step_s
    return dict(batch=batch, train_step_s=step_s, calibration_s=record["seconds"],
                calibration_overhead_s=record["seconds"] - calib_steps * step_s,
                epoch_s=epoch_s, share_of_epoch=record["seconds"] / (epoch_s + record["seconds"]),
                ramped_share=record["ramped_share"], peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256, help="images per training step (calibration part)")
    parser.add_argument("--steps-per-epoch", type=int, default=1251)
    parser.add_argument("--calib-steps", type=int, default=30)
    parser.add_argument("--skip-calibration", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_qramping.py needs a CUDA GPU")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    results = {"steps": step_rows(), "correctness": correctness()}
    for row in results["steps"]:
        print(f"{row['optimizer']:<52} {row['ms']:8.3f} ms  {row['ratio']:6.2f}x fused AdamW")
    for key, value in results["correctness"].items():
        print(f"{key:<52} max rel diff {value:.2e}")
    if not args.skip_calibration:
        row = calibration_row(args.batch, args.steps_per_epoch, args.calib_steps)
        results["calibration"] = row
        print(f"train step (batch {row['batch']}) {row['train_step_s'] * 1e3:.1f} ms; calibration "
              f"{row['calibration_s']:.2f} s ({row['calibration_overhead_s']:.2f} s beyond its steps) = "
              f"{100 * row['share_of_epoch']:.2f}% of a {args.steps_per_epoch}-step epoch; "
              f"ramped share {row['ramped_share']:.4f}; peak {row['peak_mem_gib']:.1f} GiB")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
