"""GPU check of the device-side stochastic seeds, torch.compile and CUDA-graph capture (the CPU tests cover what
the CPU can: tests/test_compile.py, tests/test_quant_stochastic.py).

Checks: the kernels reading seed words drawn on the GPU equal the CPU reference fed the same words; QLinear's
forward and backward make no host synchronisation (torch.cuda.set_sync_debug_mode("error")); a fullgraph-compiled
tetrajet DeiT-T forward + backward equals eager (aot_eager bit for bit; inductor's max relative difference is
reported, as it fuses the unquantized ops); a CUDA graph of a tetrajet QLinear step draws fresh seeds at every
replay and replays what eager computes from the same generator state.

Usage (on a CUDA machine): python scripts/check_compile_gpu.py
Prints a pass/fail table and exits non-zero if any check fails.
"""
from __future__ import annotations

import copy
import sys
import traceback

import torch

from models import build_model
from quantization import QLinear, get_recipe
from quantization.mx.ops import MXTensor, draw_seeds, quantize_2d, quantize_both_layouts_2d, requantize_2d
from quantization.mx.testing import assert_bitwise_equal
from training.compile import compile_model

DEIT_T = dict(img_size=224, num_classes=1000, drop_path_rate=0.1)


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


def _deit_step(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    torch.manual_seed(5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x).float().square().mean()
    loss.backward()
    grads = [loss.detach()] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def compiled_deit_equals_eager(backend: str) -> str:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model("deit_tiny_patch16_224", get_recipe("tetrajet"), **DEIT_T).cuda()
    compiled = compile_model(copy.deepcopy(model), backend)  # what train.compile does (inductor: eager RNG)
    x = torch.randn(16, 3, 224, 224, device="cuda")
    eager, traced = _deit_step(model, x), _deit_step(compiled, x)
    if backend == "aot_eager":
        for a, b in zip(eager, traced):
            assert torch.equal(a, b)
        return "bit for bit"
    names = ["loss"] + [name for name, _ in model.named_parameters()]
    errors = {name: ((a - b).abs().max() / a.abs().max().clamp(min=1e-30)).item()
              for name, a, b in zip(names, eager, traced)}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 0.1, f"max relative difference {errors[worst]:.3g} ({worst})"
    return f"max relative difference {errors[worst]:.3g} ({worst}; loss and every gradient)"


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


CHECKS = {
    "seeds drawn on the GPU: kernels == CPU reference": seeds_on_device_equal_cpu_reference,
    "no host sync in QLinear forward + backward": no_host_sync,
    "DeiT-T fullgraph aot_eager == eager": lambda: compiled_deit_equals_eager("aot_eager"),
    "DeiT-T fullgraph inductor ~ eager": lambda: compiled_deit_equals_eager("inductor"),
    "CUDA graph of a tetrajet QLinear step": cuda_graph_step,
}


def main() -> int:
    assert torch.cuda.is_available(), "this check needs a CUDA GPU"
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    failed = 0
    for name, check in CHECKS.items():
        try:
            note, verdict = check(), "pass"
        except Exception as error:  # report every check, then fail
            note, verdict = f"{type(error).__name__}: {error}".splitlines()[0][:200], "FAIL"
            failed += 1
            traceback.print_exc(file=sys.stderr)
        print(f"{verdict:4}  {name:52}  {note}", flush=True)
    print(f"{len(CHECKS) - failed}/{len(CHECKS)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
