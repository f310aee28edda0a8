"""Training-step benchmark on one CUDA GPU: BF16 against TetraJet, Q-EMA and Q-Ramping on the DeiT models.

For each model and method: a timm model with its block Linears quantized (models.build_model), fp32 master
weights, a seeded synthetic batch (randn images, 1000 random labels), and a training step = zero_grad, forward under
bf16 autocast, cross-entropy (+ the method's extra loss terms), backward, optimizer step (fused AdamW over timm's
weight-decay groups, or the method's own AdamW: QRampingAdamW for tetrajet_qramping), with the method's hooks
attached (quantization.method_hooks: Q-EMA's update for tetrajet_qema) and its state as in most of training
(steady_state: Q-EMA rounding on from the start, realistic Q-Ramping update periods on every block Linear weight).
Step time: median over ``--steps`` steps after ``--warmup``, each step bracketed by CUDA events (so a host-bound step
counts the GPU's idle time); peak memory over the timed steps (a graphed row's over its eager warm-up and capture
too, as a training run's). A method that calibrates (Q-Ramping) also times one calibration of ``--calib-steps``
steps and amortizes it over an epoch of ``--steps-per-epoch`` steps. Every step time is compared with the model's
faster BF16 step (eager or graphed), peak memory with BF16 stepped the same way. Then the quantizer kernels'
bandwidth (scripts/bench_quant.py: launched eagerly and replayed from a CUDA graph) and, with ``--profile``, where a
tetrajet step's GPU time goes beyond a BF16 step's, its host-side operators, and whether each step is host- or
GPU-bound. ``--cuda-graph`` adds a row per method for the same step replayed as CUDA graphs (train.cuda_graph:
training.GraphedTrainStep, the optimizer capturable, the loss read on the host between the two graphs as the training
loop does).

Usage: python scripts/bench.py [--models deit_tiny,deit_small,deit_base] [--methods bf16,tetrajet,...]
       [--batch 256] [--steps 30] [--warmup 10] [--cuda-graph] [--no-kernels] [--profile] [--json bench.json]
       [--commit SHA]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from typing import Callable, Sequence

import torch
import triton
from timm.optim import param_groups_weight_decay
from torch import nn

from bench_qramping import HYPER, block_weights, realistic_periods
from bench_quant import TOKENS, print_quantizer_rows, quantizer_rows
from models import PAPER_MODELS, build_model
from quantization import (MethodHook, QRampingAdamW, TrainingContext, get_recipe, hooks_optimizer, method_hooks,
                          with_extra_losses)
from quantization.ema import qema_layers
from quantization.ema import QEMA_WARMUP_UPDATES
from training import GraphedTrainStep, rewound, source_commit

MODELS = {name.split("_patch")[0]: name for name in PAPER_MODELS}  # deit_tiny -> deit_tiny_patch16_224, ...
METHODS = ("bf16", "tetrajet", "tetrajet_qema", "tetrajet_qramping")
# Step time x the model's faster BF16 step (Q-Ramping amortized), by (model, method); peak memory x BF16, by method.
STEP_TARGETS = {("deit_tiny", "tetrajet"): 1.15, ("deit_small", "tetrajet"): 1.15, ("deit_base", "tetrajet"): 1.12,
                ("deit_small", "tetrajet_qema"): 1.20, ("deit_small", "tetrajet_qramping"): 1.25}
MEMORY_TARGETS = {"tetrajet": 0.85}
WEIGHT_DECAY = 0.05
IMAGENET_IMAGES, EPOCHS = 1281167, 90
GPU_BOUND_BUSY = 0.9  # a step whose GPU is busy this share of its wall time is GPU-bound


def choice_list(valid: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """An argparse ``type`` for a comma list of ``valid`` names (order kept, duplicates dropped)."""
    def parse(text: str) -> list[str]:
        names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        bad = [n for n in names if n not in valid]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(map(repr, bad)) or '(none given)'}; "
                                              f"valid choices: {', '.join(valid)}")
        return names
    return parse


def positive_int(text: str) -> int:
    """An argparse ``type`` for an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def gpu_hours(step_ms: float, batch: int) -> float:
    """GPU-hours for 90 ImageNet epochs on one GPU: 90 * ceil(1281167 / batch) steps of ``step_ms``."""
    return EPOCHS * math.ceil(IMAGENET_IMAGES / batch) * step_ms / 1e3 / 3600


def target_cell(ratio: float | None, limit: float | None) -> str:
    """``<=1.25x ok`` / ``<=1.25x MISS`` (``?`` without a ratio); empty without a target."""
    if limit is None:
        return ""
    return f"<={limit:.2f}x " + ("?" if ratio is None else "ok" if ratio <= limit else "MISS")


def summarize(runs: list[dict], batch: int, steps_per_epoch: int) -> list[dict]:
    """Measured runs (model, method, step_ms, peak_mib, calibration_s or None; graph: replayed as CUDA graphs, False
    if absent) with their step time as a ratio to the same model's faster bf16 step (eager or graphed), their peak
    memory as a ratio to the bf16 run stepped the same way (a graph's memory pool counts), None without one; amortized
    step time (+ calibration / steps_per_epoch), images/s and GPU-hours (both at the amortized time), and the
    targets."""
    bf16 = {(r["model"], r.get("graph", False)): r for r in runs if r["method"] == "bf16"}
    fastest: dict[str, float] = {}
    for (model, _), r in bf16.items():
        fastest[model] = min(fastest.get(model, math.inf), r["step_ms"])
    rows = []
    for run in runs:
        base_ms = fastest.get(run["model"])
        base = bf16.get((run["model"], run.get("graph", False)))
        calib = run["calibration_s"]
        amortized = None if calib is None else run["step_ms"] + calib * 1e3 / steps_per_epoch
        effective = amortized if amortized is not None else run["step_ms"]
        ratio = None if base_ms is None else run["step_ms"] / base_ms
        amortized_ratio = None if base_ms is None or amortized is None else amortized / base_ms
        mem_ratio = None if base is None else run["peak_mib"] / base["peak_mib"]
        target = STEP_TARGETS.get((run["model"], run["method"]))
        rows.append(dict(run, ratio=ratio, amortized_ms=amortized, amortized_ratio=amortized_ratio,
                         mem_ratio=mem_ratio, images_per_s=batch / effective * 1e3,
                         gpu_hours_90_epochs=gpu_hours(effective, batch),
                         target=target_cell(amortized_ratio if amortized is not None else ratio, target),
                         mem_target=target_cell(mem_ratio, MEMORY_TARGETS.get(run["method"]))))
    return rows


def format_table(rows: list[dict]) -> str:
    """One model's summarized rows as a text table ("-" where a value does not apply or bf16 was not run)."""
    def num(value: float | None, spec: str, suffix: str = "") -> str:
        return "-" if value is None else f"{value:{spec}}{suffix}"

    lines = [f"{'method':<24} {'step ms':>8} {'x bf16':>7} {'amort ms':>9} {'x bf16':>7} {'target':>13} "
             f"{'peak MiB':>9} {'x bf16':>7} {'target':>13} {'img/s':>7} {'GPU-h 90ep':>10}"]
    for r in rows:
        label = r["method"] + (" +graph" if r.get("graph") else "")
        lines.append(f"{label:<24} {r['step_ms']:8.1f} {num(r['ratio'], '.2f', 'x'):>7} "
                     f"{num(r['amortized_ms'], '.1f'):>9} {num(r['amortized_ratio'], '.2f', 'x'):>7} "
                     f"{r['target']:>13} {r['peak_mib']:9.0f} {num(r['mem_ratio'], '.2f', 'x'):>7} "
                     f"{r['mem_target']:>13} {r['images_per_s']:7.0f} {r['gpu_hours_90_epochs']:10.1f}")
    return "\n".join(lines)


def bound_by(busy_ms: float, wall_ms: float) -> str:
    """'GPU-bound' when the GPU is busy at least GPU_BOUND_BUSY of the wall step time, else 'host-bound'."""
    return "GPU-bound" if busy_ms >= GPU_BOUND_BUSY * wall_ms else "host-bound"


def steady_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The state most of a training run is in, so that the timed steps measure it: every Q-EMA layer past its
    warm-up (Q-EMA rounding on) and, for QRampingAdamW, update periods as calibrations assign them
    (bench_qramping.realistic_periods)."""
    for layer in qema_layers(model):
        layer.qema_state.ema_updates.fill_(QEMA_WARMUP_UPDATES)
    if isinstance(optimizer, QRampingAdamW):
        optimizer.set_update_periods(realistic_periods(block_weights(model)))


def build(model_name: str, method: str, args: argparse.Namespace,
          capturable: bool = False) -> tuple[nn.Module, torch.optim.Optimizer, list[MethodHook]]:
    """Seeded model on the GPU, its optimizer (``capturable``: for CUDA graphs) and the method's attached hooks, as
    the module docstring says."""
    torch.manual_seed(0)
    recipe = get_recipe(method)
    model = build_model(MODELS[model_name], recipe, img_size=args.img_size).cuda()
    hooks = method_hooks(recipe)
    adamw = hooks_optimizer(hooks) or torch.optim.AdamW
    optimizer = adamw(param_groups_weight_decay(model, WEIGHT_DECAY), **HYPER, fused=True, capturable=capturable)
    context = TrainingContext(model, optimizer, args.steps_per_epoch, EPOCHS * args.steps_per_epoch, torch.bfloat16)
    for hook in hooks:
        if hook.calibration_steps:
            hook.calibration_steps = args.calib_steps
        hook.attach(context)
    steady_state(model, optimizer)
    return model, optimizer, hooks


def synthetic_batch(batch: int, img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random images and labels on the GPU."""
    g = torch.Generator(device="cuda").manual_seed(1)
    return (torch.randn(batch, 3, img_size, img_size, generator=g, device="cuda"),
            torch.randint(0, 1000, (batch,), generator=g, device="cuda"))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, hooks: Sequence[MethodHook], batch: int,
               img_size: int) -> Callable[[int], None]:
    """A training step on a fixed synthetic batch; takes the step index (the calibrator passes it; 0 otherwise),
    which the hooks' extra loss terms see."""
    x, y = synthetic_batch(batch, img_size)

    def step(index: int = 0) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = with_extra_losses(nn.functional.cross_entropy(model(x), y), hooks, index)
        loss.backward()
        optimizer.step()

    return step


def graphed_step(graph: GraphedTrainStep, batch: int, img_size: int) -> Callable[[int], None]:
    """``train_step``'s step through ``graph`` (captured after its warm-up), reading the loss on the host between
    the two graphs as the training loop does."""
    x, y = synthetic_batch(batch, img_size)

    def step(index: int = 0) -> None:
        graph.forward_backward(x, y, index).item()
        graph.optimizer_step()

    return step


def time_steps(step: Callable[[], None], warmup: int, steps: int,
               peak_over_warmup: bool = False) -> tuple[float, float]:
    """Median step time (ms, CUDA events) over ``steps`` steps after ``warmup``, and their peak memory (MiB).

    ``peak_over_warmup``: the peak counts the warm-up steps too. A CUDA graph's activations live in its private
    pool, allocated while it is captured (in the warm-up) and only reserved afterwards, so replays alone would not
    show them."""
    if peak_over_warmup:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    if not peak_over_warmup:
        torch.cuda.reset_peak_memory_stats()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events), torch.cuda.max_memory_allocated() / 2**20


def measure(model_name: str, method: str, args: argparse.Namespace, graphed: bool = False) -> dict:
    """One run: step time and peak memory, plus the seconds of one calibration for a method that calibrates (else
    None); ``graphed``: the step replayed as CUDA graphs (its calibration eager, as in training)."""
    model, optimizer, hooks = build(model_name, method, args, capturable=graphed)
    graph = GraphedTrainStep(model, nn.CrossEntropyLoss(), optimizer, device=torch.device("cuda"),
                             amp_dtype=torch.bfloat16, clip_grad=None, hooks=hooks) if graphed else None
    step = graphed_step(graph, args.batch, args.img_size) if graphed else \
        train_step(model, optimizer, hooks, args.batch, args.img_size)
    step_ms, peak_mib = time_steps(step, max(args.warmup, graph.warmup + 1) if graphed else args.warmup, args.steps,
                                   peak_over_warmup=graphed)
    calibrating = [hook for hook in hooks if hook.calibration_steps]
    with graph.eager() if graphed else contextlib.nullcontext():
        calibration_s = sum(hook.calibrate(step, rewind=lambda: rewound([model, optimizer]))["seconds"]
                            for hook in calibrating) if calibrating else None
    return dict(model=model_name, method=method, graph=graphed, step_ms=step_ms, peak_mib=peak_mib,
                calibration_s=calibration_s)


def profile(model_name: str, method: str, args: argparse.Namespace, steps: int = 5) -> dict:
    """Wall time of a ``method`` step (no profiler), its GPU busy time, its CUDA kernels by time and its host-side
    operators by self CPU time with calls per step (torch.profiler: where a host-bound step's time goes)."""
    model, optimizer, hooks = build(model_name, method, args)
    step = train_step(model, optimizer, hooks, args.batch, args.img_size)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - start) * 1e3 / steps
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    kernels: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name] += event.device_time / 1e3 / steps
    busy_ms = sum(kernels.values())  # one stream: its kernels do not overlap
    host_ops = [(e.key, e.self_cpu_time_total / 1e3 / steps, e.count // steps) for e in prof.key_averages()
                if e.self_cpu_time_total > 0]
    return dict(model=model_name, method=method, wall_ms=wall_ms, gpu_busy_ms=busy_ms, bound=bound_by(busy_ms, wall_ms),
                kernels_ms=sorted(kernels.items(), key=lambda kv: -kv[1]),
                host_ops_ms=sorted(host_ops, key=lambda row: -row[1]))


def extra_kernel_ms(profiled: dict, baseline: dict) -> list[tuple[str, float]]:
    """GPU time per step by kernel name that ``profiled`` spends beyond ``baseline`` (both from ``profile``), the
    largest first; kernels that only ``profiled`` runs (the quantizers) count in full."""
    base = dict(baseline["kernels_ms"])
    extra = [(name, ms - base.get(name, 0.0)) for name, ms in profiled["kernels_ms"]]
    return sorted(extra, key=lambda kv: -kv[1])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=choice_list(tuple(MODELS), "model"),
                        default="deit_tiny,deit_small,deit_base", help="comma list (default: the three DeiTs)")
    parser.add_argument("--methods", type=choice_list(METHODS, "method"), default=",".join(METHODS),
                        help="comma list (default: all); ratios need bf16")
    parser.add_argument("--batch", type=positive_int, default=256)
    parser.add_argument("--img-size", type=positive_int, default=224)
    parser.add_argument("--steps", type=positive_int, default=30, help="timed steps (median)")
    parser.add_argument("--warmup", type=positive_int, default=10, help="untimed steps before them")
    parser.add_argument("--steps-per-epoch", type=positive_int, default=1251,
                        help="steps that one Q-Ramping calibration is amortized over (ImageNet, 4 GPUs x 256)")
    parser.add_argument("--calib-steps", type=positive_int, default=30,
                        help="steps of a method's calibration (Q-Ramping's T0)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="also time each method's step replayed as CUDA graphs (train.cuda_graph)")
    parser.add_argument("--no-kernels", action="store_true", help="skip the quantizer kernel table")
    parser.add_argument("--profile", action="store_true", help="profile a tetrajet step of the first model")
    parser.add_argument("--json", help="also write everything to this file")
    parser.add_argument("--commit", help="commit to report (default: this checkout's, else 'unknown')")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench.py needs a CUDA GPU (torch.cuda.is_available() is False); run it on the GPU machine")
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                  commit=args.commit or source_commit(), date=datetime.datetime.now().isoformat(timespec="seconds"),
                  args=vars(args), runs=[])
    print(f"{result['device']} | torch {result['torch']} | triton {result['triton']} | commit {result['commit']} | "
          f"{result['date']}")
    for model_name in args.models:
        runs = []
        for method in args.methods:
            for graphed in (False, True) if args.cuda_graph else (False,):
                runs.append(measure(model_name, method, args, graphed))
                gc.collect()
                torch.cuda.empty_cache()
        rows = summarize(runs, args.batch, args.steps_per_epoch)
        result["runs"] += rows
        print(f"\n{MODELS[model_name]}: batch {args.batch}, {args.img_size}px, median of {args.steps} steps after "
              f"{args.warmup} (CUDA events); Q-Ramping amortizes one {args.calib_steps}-step calibration per "
              f"{args.steps_per_epoch} steps")
        print(format_table(rows))
    print(f"\nGPU-h 90ep: GPU-hours for {EPOCHS} ImageNet epochs ({IMAGENET_IMAGES} images, ceil(N / batch) steps) on "
          f"one GPU at this step time (amortized for Q-Ramping); img/s likewise")
    if args.profile:
        for method in ("bf16", "tetrajet"):
            result["profile_bf16" if method == "bf16" else "profile"] = profile(args.models[0], method, args)
            gc.collect()
            torch.cuda.empty_cache()
        p, base = result["profile"], result["profile_bf16"]
        for q in (base, p):
            print(f"\nprofile, {q['method']} {MODELS[q['model']]}: wall {q['wall_ms']:.1f} ms/step, GPU busy "
                  f"{q['gpu_busy_ms']:.1f} ms/step ({q['gpu_busy_ms'] / q['wall_ms']:.0%}): {q['bound']}")
        print(f"GPU time tetrajet spends beyond bf16, by kernel ({p['gpu_busy_ms'] - base['gpu_busy_ms']:+.1f} ms in "
              f"all)")
        for name, ms in extra_kernel_ms(p, base)[:12]:
            print(f"{ms:+8.3f} ms  {name[:100]}")
        print("host operators by self CPU time (under the profiler, which slows the host)")
        for name, ms, calls in p["host_ops_ms"][:25]:
            print(f"{ms:8.3f} ms  {calls:5d} calls  {name[:90]}")
    if not args.no_kernels:
        x = torch.randn(TOKENS, 384, device="cuda", dtype=torch.bfloat16)
        result["kernels"] = quantizer_rows(x)
        print_quantizer_rows(result["kernels"], tuple(x.shape))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
