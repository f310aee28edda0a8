"""GPU check of the device-side stochastic seeds, torch.compile and CUDA-graph capture (the CPU tests cover what
the CPU can: tests/training/test_compile.py, tests/quantization/mx/test_stochastic.py).

Checks: the kernels reading seed words drawn on the GPU equal the CPU reference fed the same words; QLinear's
forward and backward make no host synchronisation (torch.cuda.set_sync_debug_mode("error")); a fullgraph-compiled
tetrajet DeiT-T forward + backward equals eager (aot_eager bit for bit; under inductor, which fuses the unquantized
ops and may order the random draws differently, microscaling and tetrajet no farther from eager than eager is from
itself with the input moved by a bf16 ulp or, for tetrajet, another seed); a CUDA graph of a tetrajet QLinear step
draws fresh seeds at every replay and replays what eager computes from the same generator state; train.cuda_graph:
DeiT-T (batch 8) trained through engine.train_one_epoch (two epochs of three steps, clipping, model EMA, a learning
rate changing at every step, Q-Ramping calibrating at each epoch start) replaying CUDA graphs ends bit for bit where
the same steps run eagerly end (losses, weights, optimizer state, model EMA), for bf16, tetrajet, tetrajet_qema,
tetrajet_qramping and tetrajet_freeze, with its distance to train.cuda_graph=false (the default, non-capturable
AdamW) reported; and QRampingAdamW(capturable=True), captured alone, replays the host-counter step bit for bit on
the GPU's kernel.

Usage (on a CUDA machine): python scripts/check_compile_gpu.py [--only TEXT]   (e.g. --only cuda_graph)
Prints a pass/fail table and exits non-zero if any check fails.
"""
from __future__ import annotations

import argparse
import copy
import sys
import traceback
from typing import Optional

import torch
from timm.utils import ModelEmaV3
from torch import nn

import engine
import training
from configs import OptimConfig
from models import build_model
from quantization import (QLinear, QRampingAdamW, QRampingConfig, TrainingContext, get_recipe, hooks_optimizer,
                          method_hooks)
from quantization.mx.ops import MXTensor, draw_seeds, quantize_2d, quantize_both_layouts_2d, requantize_2d
from quantization.mx.testing import assert_bitwise_equal
from training.compile import compile_model

DEIT_T = dict(img_size=224, num_classes=1000, drop_path_rate=0.1)
GRAPH_RECIPES = ("bf16", "tetrajet", "tetrajet_qema", "tetrajet_qramping", "tetrajet_freeze")


def seeds_on_device_equal_cpu_reference() -> str:
    x = torch.randn(1000, 1229, device="cuda", dtype=torch.bfloat16)
    seeds = draw_seeds(2, "cuda")
    for layout, seed in zip(("1x32", "32x1"), seeds):
        got = quantize_2d(x, layout, "e2m1", "rceil", "stochastic", seed=seed)[0]
        want = quantize_2d(x.cpu(), layout, "e2m1", "rceil", "stochastic", seed=seed.cpu(), backend="torch")[0]
        assert_bitwise_equal(got.cpu(), want)
    even = x[:, :1228].contiguous()
    got = quantize_both_layouts_2d(even, "e2m1", "rceil", "stochastic", seeds=tuple(seeds))
    want = quantize_both_layouts_2d(even.cpu(), "e2m1", "rceil", "stochastic", seeds=tuple(seeds.cpu()),
                                    backend="torch")
    for a, b in zip(got, want):
        assert_bitwise_equal(a.cpu(), b)
    _, packed, scales = quantize_2d(even, "1x32", "e2m1", "rceil", "nearest", want_values=False, want_packed=True)
    mx = MXTensor(packed, scales, even.shape, even.dtype, "1x32", "e2m1")
    mx_cpu = MXTensor(packed.cpu(), scales.cpu(), even.shape, even.dtype, "1x32", "e2m1")
    assert_bitwise_equal(requantize_2d(mx, "e2m1", "rceil", "stochastic", seed=seeds[0]).cpu(),
                         requantize_2d(mx_cpu, "e2m1", "rceil", "stochastic", seed=seeds[0].cpu(), backend="torch"))
    return "1x32, 32x1, both layouts, requantize"


def no_host_sync() -> str:
    for name in ("tetrajet", "tetrajet_qema", "microscaling"):
        layer = QLinear(384, 1536, recipe=name).cuda()
        x = torch.randn(8, 197, 384, device="cuda", requires_grad=True)
        layer(x).sum().backward()  # warm-up: Triton compiles and caches
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = layer(x)
            y.float().sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return "tetrajet, tetrajet_qema, microscaling"


def _deit_step(model: torch.nn.Module, x: torch.Tensor, seed: int = 5) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x).float().square().mean()
    loss.backward()
    grads = [loss.detach()] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def _relative_errors(reference: list[torch.Tensor], other: list[torch.Tensor], names: list[str]) -> dict[str, float]:
    return {name: ((a.float() - b.float()).norm() / a.float().norm().clamp(min=1e-30)).item()
            for name, a, b in zip(names, reference, other)}


def compiled_deit_equals_eager(backend: str, recipe: str = "tetrajet") -> str:
    """Loss and every gradient of one DeiT-T step, compiled against eager. aot_eager must match bit for bit.

    Inductor fuses the unquantized ops, so their results differ in the last bits; a 4-bit forward turns some of
    those into whole grid steps, and the first layers' gradients sum them up. Its distance to eager is therefore
    held to that of an eager step whose change is as innocent: the input moved by about one bf16 ulp
    (microscaling, deterministic, no drop path), or another random seed (tetrajet: inductor may order the random
    draws differently). Each gradient's relative L2 distance must stay within twice the baseline's worst."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    deterministic = recipe == "microscaling"
    kwargs = {**DEIT_T, "drop_path_rate": 0.0} if deterministic else DEIT_T
    model = build_model("deit_tiny_patch16_224", get_recipe(recipe), **kwargs).cuda()
    compiled = compile_model(copy.deepcopy(model), backend)  # what train.compile does (inductor: eager RNG)
    x = torch.randn(16, 3, 224, 224, device="cuda")
    eager, traced = _deit_step(model, x), _deit_step(compiled, x)
    if backend == "aot_eager":
        for a, b in zip(eager, traced):
            assert torch.equal(a, b)
        return "bit for bit"
    if deterministic:
        baseline = _deit_step(model, x * (1 + 2**-8 * torch.randn_like(x)))
    else:
        baseline = _deit_step(model, x, seed=6)
    names = ["loss"] + [name for name, _ in model.named_parameters()]
    compiled_errors, baseline_errors = _relative_errors(eager, traced, names), _relative_errors(eager, baseline, names)
    worst, bound = max(compiled_errors, key=compiled_errors.get), 2 * max(baseline_errors.values())
    assert compiled_errors[worst] <= bound, (f"relative distance {compiled_errors[worst]:.3g} ({worst}) above twice "
                                             f"the baseline's worst ({bound / 2:.3g})")
    return f"worst relative L2 distance {compiled_errors[worst]:.3g} ({worst}); baseline's worst {bound / 2:.3g}"


def cuda_graph_step() -> str:
    torch.manual_seed(0)
    layer = QLinear(384, 1536, recipe="tetrajet").cuda()
    x = torch.randn(8, 197, 384, device="cuda")

    def step() -> torch.Tensor:
        layer.weight.grad = None
        layer(x).square().sum().backward()
        return layer.weight.grad

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    layer.weight.grad = None
    with torch.cuda.graph(graph):
        layer(x).square().sum().backward()
    grad = layer.weight.grad
    torch.manual_seed(1)
    graph.replay()
    first = grad.clone()
    graph.replay()
    assert not torch.equal(first, grad), "two replays gave the same stochastic gradient"
    torch.manual_seed(1)
    layer.weight.grad = None
    eager = step()
    assert torch.equal(first, eager), "a replay differs from eager from the same generator state"
    return "replays advance the stream; a replay equals eager"


class _Log:
    def __init__(self) -> None:
        self.losses: list[float] = []

    def write(self, record: dict) -> None:
        if record["type"] == "step":
            self.losses.append(record["loss"])


def _train_tiny_deit(name: str, capture: Optional[training.cuda_graph.Capture], epochs: int = 2,
                     steps_per_epoch: int = 3) -> tuple[list[float], list[dict], Optional[training.GraphedTrainStep]]:
    """Train DeiT-T on 8 fixed random images a step through engine.train_one_epoch, as main.py does under
    train.cuda_graph (capture given: capturable optimizer, GraphedTrainStep with one warm-up step) or without it
    (None: the default optimizer and eager steps). Returns the losses, the final states (model, model EMA,
    optimizer) and the graphed step."""
    torch.manual_seed(0)
    recipe = get_recipe(name)
    if recipe.method_config("qramping") is not None:  # periods above 1 after two calibration steps
        recipe = recipe.replace(qramping=QRampingConfig(k1=1.0, k2=2, calib_steps=2))
    model = build_model("deit_tiny_patch16_224", recipe, **DEIT_T).cuda()
    hooks = method_hooks(recipe)
    optimizer = training.build_optimizer(model, OptimConfig(), 1e-3, adamw=hooks_optimizer(hooks),
                                         capturable=capture is not None)
    for hook in hooks:
        hook.attach(TrainingContext(model, optimizer, steps_per_epoch, epochs * steps_per_epoch, torch.bfloat16))
    criterion = nn.CrossEntropyLoss()
    graph = None if capture is None else training.GraphedTrainStep(
        model, criterion, optimizer, device=torch.device("cuda"), amp_dtype=torch.bfloat16, clip_grad=1.0,
        hooks=hooks, warmup=1, capture=capture)
    model_ema = ModelEmaV3(model, decay=0.9)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 224, 224, generator=g), torch.randint(0, 1000, (8,), generator=g))
               for _ in range(steps_per_epoch)]

    def calib_batches(step: int, count: int):
        return iter([(x.cuda(), y.cuda()) for x, y in batches[:count]])

    def before_step(step: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * (1 + step % 3)

    log = _Log()
    for epoch in range(epochs):
        engine.train_one_epoch(model, batches, criterion, optimizer, torch.amp.GradScaler("cuda", enabled=False),
                               training.DistContext(0, 1, torch.device("cuda")), epoch, amp_dtype=torch.bfloat16,
                               mixup=None, model_ema=model_ema, clip_grad=1.0, logger=log, log_interval=1,
                               first_step=epoch * steps_per_epoch, hooks=hooks, calib_batches=calib_batches,
                               before_step=before_step, graph=graph)
    return log.losses, [model.state_dict(), model_ema.state_dict(), optimizer.state_dict()["state"]], graph


def _tensors(states: list[dict]) -> list[torch.Tensor]:
    out = []
    for state in states:
        for value in state.values():
            out += _tensors([value]) if isinstance(value, dict) else [value] if isinstance(value, torch.Tensor) else []
    return out


def _assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.is_floating_point():
        assert_bitwise_equal(a, b)
    else:
        assert a.dtype == b.dtype and torch.equal(a, b), (a.dtype, b.dtype)


def cuda_graph_training(name: str) -> str:
    losses, states, graph = _train_tiny_deit(name, training.cuda_capture)
    eager_losses, eager_states, _ = _train_tiny_deit(name, training.eager_capture)
    assert graph.replays > 0, "no step was replayed"
    assert losses == eager_losses, f"losses {losses} vs eager {eager_losses}"
    for a, b in zip(_tensors(states), _tensors(eager_states), strict=True):
        _assert_same(a, b)
    default_losses, default_states, _ = _train_tiny_deit(name, None)
    loss_gap = max(abs(a - b) for a, b in zip(losses, default_losses))
    weight_gap = max((a.float() - b.float()).abs().max().item()
                     for a, b in zip(states[0].values(), default_states[0].values()) if a.is_floating_point())
    return (f"{graph.replays} replays, {graph.captures} capture(s): losses, weights, EMA, optimizer bit for bit; "
            f"vs cuda_graph=false: losses within {loss_gap:.2g}, weights within {weight_gap:.2g} (lr <= 3e-3)")


def qramping_capturable_step() -> str:
    """QRampingAdamW(capturable=True), its step() captured in a CUDA graph and replayed at a new rate each step,
    against the host-counter optimizer stepped eagerly: bit for bit, on the GPU's Triton kernel."""
    g = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(384, 1536), (1536,), (192, 192)]
    init = [torch.randn(s, device="cuda", generator=g) for s in shapes]
    grads = [[torch.randn(s, device="cuda", generator=g) for s in shapes] for _ in range(8)]
    periods = [torch.randint(1, 4, s, device="cuda", generator=g) for s in shapes]
    rates = [1e-3 * (1 + i % 3) for i in range(len(grads))]
    runs = []
    for capturable in (False, True):
        params = [p.clone().requires_grad_() for p in init]
        optimizer = QRampingAdamW(params, lr=1e-3, weight_decay=0.05, backend="triton", capturable=capturable)
        optimizer.set_update_periods(dict(zip(params, periods)))
        for p, grad in zip(params, grads[0]):
            p.grad = grad.clone()
        lr = torch.zeros((), dtype=torch.float64, device="cuda")
        graph = None
        for i, step_grads in enumerate(grads):
            for p, grad in zip(params, step_grads):
                p.grad.copy_(grad)
            optimizer.param_groups[0]["lr"] = lr.fill_(rates[i]) if capturable else rates[i]
            if graph is None:
                optimizer.step()  # the capturable run's first step builds its tables (warm-up)
                if capturable:
                    graph = training.cuda_capture(optimizer.step, None)
            else:
                graph.replay()
        runs.append((params, optimizer))
    for p, q in zip(runs[0][0], runs[1][0]):
        assert_bitwise_equal(p.detach(), q.detach())
        for key, value in runs[0][1].state[p].items():
            _assert_same(value.cuda(), runs[1][1].state[q][key])
    return f"{len(grads)} steps, 7 replays, periods 1-3, the rate changing at every step"


CHECKS = {
    "seeds drawn on the GPU: kernels == CPU reference": seeds_on_device_equal_cpu_reference,
    "no host sync in QLinear forward + backward": no_host_sync,
    "DeiT-T fullgraph aot_eager == eager": lambda: compiled_deit_equals_eager("aot_eager"),
    "DeiT-T fullgraph inductor ~ eager, microscaling": lambda: compiled_deit_equals_eager("inductor", "microscaling"),
    "DeiT-T fullgraph inductor ~ eager, tetrajet": lambda: compiled_deit_equals_eager("inductor"),
    "CUDA graph of a tetrajet QLinear step": cuda_graph_step,
    "cuda_graph: QRampingAdamW capturable == host counters": qramping_capturable_step,
    **{f"cuda_graph: training == eager steps, {name}": (lambda name=name: cuda_graph_training(name))
       for name in GRAPH_RECIPES},
}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", metavar="TEXT", default="", help="run only the checks whose name contains TEXT")
    checks = {name: check for name, check in CHECKS.items() if parser.parse_args(argv).only in name}
    assert torch.cuda.is_available(), "this check needs a CUDA GPU"
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    failed = 0
    for name, check in checks.items():
        try:
            note, verdict = check(), "pass"
        except Exception as error:  # report every check, then fail
            note, verdict = f"{type(error).__name__}: {error}".splitlines()[0][:200], "FAIL"
            failed += 1
            traceback.print_exc(file=sys.stderr)
        print(f"{verdict:4}  {name:52}  {note}", flush=True)
    print(f"{len(checks) - failed}/{len(checks)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
