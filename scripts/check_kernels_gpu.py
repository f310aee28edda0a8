"""GPU check: compiled Triton kernels against the PyTorch reference, bit for bit, on >= 10^7-element tensors for every
mode (the backward pass's fused kernels included), the boundary cases of tests/quantization/mx/test_exact.py (grid
midpoints and their one-ulp neighbours, Q-EMA on all-zero blocks, rceil saturation at the top of the dtype,
stochastic rounding of fp32-subnormal steps at draws of exactly 0) against
the CPU reference, plus the statistical stochastic-rounding check and QLinear on CUDA against the CPU reference
composition.

Usage (on a CUDA machine): python scripts/check_kernels_gpu.py [--elements 10000000] [--only fused,boundary,QLinear]
Prints one line per check and exits non-zero if any fails.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from unittest import mock

import torch

from quantization import FORMATS, QLinear, dequantize, get_recipe, quantize, quantize_packed
from quantization.mx.formats import LAYOUTS, ROUNDINGS, SCALE_RULES
from quantization.mx.ops import quantize_2d, quantize_both_layouts_2d, requantize_2d
from quantization.mx.testing import (STOCHASTIC_BLOCK, as_layout, assert_bitwise_equal, both_ways, check_both_layouts,
                                     check_quantize, check_requantize, check_zero_draws, edge_matrix, grid_neighbours,
                                     max_bias_in_sigmas, midpoint_blocks, overflow_blocks, requantize_input,
                                     zero_blocks_with_ema, zero_draw_case)
from quantization.recipes import ROLE_LAYOUTS


def big_input(n_elements: int, fmt: str, dtype: torch.dtype, layout: str) -> torch.Tensor:
    """A (rows, cols) CUDA tensor with odd sizes (tails in both layouts): heavy-tailed random values with the
    edge-case blocks of the unit tests tiled into its first columns (1x32) or rows (32x1)."""
    cols = 1229
    rows = -(-n_elements // 1191) | 1  # 1191 = the column count kept for 32x1 below
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(rows, cols, device="cuda", generator=g)
    x = x * torch.exp(4 * torch.randn(rows, cols, device="cuda", generator=g))
    edges = edge_matrix(fmt, torch.float32, cols=64).cuda()
    reps = rows // edges.shape[0]
    x[: reps * edges.shape[0], :64] = edges.repeat(reps, 1)
    x = x.to(dtype)
    if layout == "32x1":
        x = x[:, : (cols // 32) * 32 + 7].t().contiguous()  # edge blocks now run down the columns
    return x


def check(name: str, fn, results: list, only: list[str]) -> None:
    if only and not any(part in name for part in only):
        return
    start = time.time()
    try:
        fn()
        results.append((name, "ok", time.time() - start))
    except AssertionError as err:
        results.append((name, f"FAIL {str(err)[:200]}", time.time() - start))
    print(f"{results[-1][1][:4]:5s} {name} ({results[-1][2]:.1f}s)", flush=True)


def kernel_vs_reference(n: int, layout: str, fmt: str, rule: str, rounding: str, dtype: torch.dtype) -> None:
    x = big_input(n, fmt, dtype, layout)
    assert x.numel() >= n
    ema = None
    if rounding == "ema":
        ema = x.float().nan_to_num(0.0, 0.0, 0.0) * (1 + 0.5 * torch.randn(x.shape, device="cuda"))
    outs = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(5)
        values = quantize(x, layout, fmt, rule, rounding, ema, backend=backend)
        torch.manual_seed(5)
        mx = quantize_packed(x, layout, fmt, rule, rounding, ema, backend=backend)
        outs[backend] = (values, mx)
    (ref_v, ref_mx), (ker_v, ker_mx) = outs["torch"], outs["triton"]
    assert_bitwise_equal(ref_v, ker_v)
    assert torch.equal(ref_mx.packed, ker_mx.packed) and torch.equal(ref_mx.scales, ker_mx.scales)
    assert_bitwise_equal(dequantize(ker_mx, backend="triton"), ker_v)
    # The GPU reference agrees with the CPU reference on a slice (guards against GPU flush-to-zero in torch ops).
    part = slice(0, 4096)
    torch.manual_seed(5)
    cpu = quantize(x[part].cpu(), layout, fmt, rule, rounding, None if ema is None else ema[part].cpu(),
                   backend="torch")
    torch.manual_seed(5)
    gpu = quantize(x[part], layout, fmt, rule, rounding, None if ema is None else ema[part], backend="triton")
    if rounding != "stochastic":  # stochastic draws depend on the flat index, which the slice keeps only for 1x32
        assert_bitwise_equal(cpu, gpu.cpu())


def fused_vs_reference(n: int, fmt: str, rule: str, rounding: str, dtype: torch.dtype) -> None:
    """Both-layouts quantization (Q3 + Q5) and 1x32-packed -> 32x1 requantization (Q6, Q4), kernel vs reference,
    on inputs with the edge blocks along the rows and down the columns."""
    for edges in ("1x32", "32x1"):
        x = big_input(n, fmt, dtype, edges)
        seeds = ((3, 2**31 - 2), (1, 1))
        ref = quantize_both_layouts_2d(x, fmt, rule, rounding, seeds=seeds, backend="torch")
        ker = quantize_both_layouts_2d(x, fmt, rule, rounding, seeds=seeds, backend="triton")
        for a, b in zip(ref, ker):
            assert_bitwise_equal(a, b)
        # An even column count takes the one-pass pair kernel; with the bias gradient's column sums from the same
        # read, which change no value.
        even = x[:, :-1].contiguous()
        plain = quantize_both_layouts_2d(even, fmt, rule, rounding, seeds=seeds, backend="torch")
        *values, sums = quantize_both_layouts_2d(even, fmt, rule, rounding, seeds=seeds, want_column_sums=True,
                                                 backend="triton")
        for a, b in zip(plain, values):
            assert_bitwise_equal(a, b)
        want = even.double().sum(0)
        in_range = torch.isfinite(want) & (even.double().abs().sum(0) < 2.0**127)
        bound = 2 * even.shape[0] * 2.0**-24 * even.double().abs().sum(0)  # fp32 sums in another order
        assert ((sums.double() - want).abs()[in_range] <= bound[in_range]).all()
        assert torch.isnan(sums[~torch.isfinite(want) & torch.isnan(want)]).all()
        mx = quantize_packed(x, "1x32", "e2m1", "rceil", "nearest", backend="triton")
        assert_bitwise_equal(requantize_2d(mx, fmt, rule, rounding, seed=seeds[0], backend="torch"),
                             requantize_2d(mx, fmt, rule, rounding, seed=seeds[0], backend="triton"))


def boundary_midpoints(dtype: torch.dtype) -> None:
    """Every grid midpoint of every format and its one-ulp neighbours (the ties only for the requantize kernel), in
    every layout, scale rule and rounding, through the compiled kernels at their launch defaults."""
    blocks = midpoint_blocks(dtype)[0]
    both, packed = both_ways(blocks), requantize_input(midpoint_blocks(dtype, neighbours=False)[0])
    for fmt, rule in itertools.product(FORMATS, SCALE_RULES):
        for layout, rounding in itertools.product(LAYOUTS, ROUNDINGS):
            x = as_layout(blocks, layout)
            check_quantize(x, layout, fmt, rule, rounding, ema=x.float() if rounding == "ema" else None,
                           device="cuda")
        for rounding in ("nearest", "even", "stochastic"):
            check_both_layouts(both, fmt, rule, rounding, device="cuda")
            check_requantize(packed, fmt, rule, rounding, device="cuda")


def boundary_qema_zero_blocks(dtype: torch.dtype) -> None:
    """Q-EMA keeps all-zero blocks exactly +-0, whatever the EMA, in both layouts."""
    for layout in LAYOUTS:
        x, ema = (as_layout(t, layout) for t in zero_blocks_with_ema(dtype))
        for fmt, rule in itertools.product(FORMATS, SCALE_RULES):
            values = check_quantize(x, layout, fmt, rule, "ema", ema=ema, device="cuda")
            assert_bitwise_equal(as_layout(values, layout)[:3], as_layout(x, layout)[:3])


def boundary_saturation(dtype: torch.dtype) -> None:
    """Values straddling rceil's saturation threshold and the dtype's largest value stay finite, in every layout,
    scale rule and rounding, plain and fused kernels."""
    blocks = overflow_blocks(dtype)[0]
    both, packed = both_ways(blocks), requantize_input(blocks)
    for fmt, rule in itertools.product(FORMATS, SCALE_RULES):
        outputs = []
        for layout, rounding in itertools.product(LAYOUTS, ROUNDINGS):
            x = as_layout(blocks, layout)
            outputs.append(check_quantize(x, layout, fmt, rule, rounding, ema=x.float() if rounding == "ema" else None,
                                          device="cuda"))
        for rounding in ("nearest", "even", "stochastic"):
            outputs += [*check_both_layouts(both, fmt, rule, rounding, device="cuda"),
                        check_requantize(packed, fmt, rule, rounding, device="cuda")]
        assert all(torch.isfinite(values).all() for values in outputs), (fmt, rule)


def stochastic_statistics(layout: str, dtype: torch.dtype) -> None:
    draws = 1 << 16
    block = STOCHASTIC_BLOCK.to(dtype).float()  # the unit test's block, as the dtype holds it
    x = block.repeat(draws, 1).to(dtype).cuda()
    if layout == "32x1":
        x = x.t().contiguous()
    torch.manual_seed(11)
    y = quantize(x, layout=layout, rounding="stochastic").float()
    y = (y if layout == "1x32" else y.t()).cpu()
    lower, upper = grid_neighbours(block)
    assert ((y == lower) | (y == upper)).all(), "values outside the two neighbours"
    z = max_bias_in_sigmas(y, block)
    assert z < 5.0, f"bias of {z:.1f} sigma"


def _cuda_seeds(count: int, device: torch.device) -> torch.Tensor:
    """The backward's seed draw taken on the GPU for either device, so that CPU and GPU layers round alike."""
    return torch.randint(0, 2**31 - 1, (count, 2), dtype=torch.int64, device="cuda").to(device)


def qlinear_cuda_vs_cpu(recipe_name: str) -> None:
    recipe = get_recipe(recipe_name)
    torch.manual_seed(0)
    cpu = QLinear(384, 1536, recipe=recipe)
    gpu = QLinear(384, 1536, recipe=recipe).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(8, 197, 384)
    dy = torch.randn(8, 197, 1536).bfloat16()
    grads = []
    for layer, device in ((cpu, "cpu"), (gpu, "cuda")):
        xi = x.detach().to(device).clone().requires_grad_()
        with torch.autocast(device, dtype=torch.bfloat16):
            y = layer(xi)
        torch.manual_seed(3)
        with mock.patch("quantization.linear.draw_seeds", _cuda_seeds):
            y.backward(dy.to(device))
        grads.append((y.detach().float().cpu(), xi.grad.cpu(), layer.weight.grad.cpu(), layer.bias.grad.cpu()))
    # The GEMMs differ between CPU and cuBLAS (accumulation order), so compare the quantized operands exactly and
    # the products to GEMM precision.
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=2e-2, atol=1e-2 * b.abs().max().item()), (a - b).abs().max().item()
    xq_cpu = quantize(x.bfloat16().reshape(-1, 384), backend="torch")
    xq_gpu = quantize(x.bfloat16().reshape(-1, 384).cuda(), backend="triton")
    assert_bitwise_equal(xq_cpu, xq_gpu.cpu())
    for role in ("q3", "q5"):
        cfg = recipe.quantizer(role)
        dy2d = dy.reshape(-1, 1536)
        a = quantize_2d(dy2d, ROLE_LAYOUTS[role], cfg.fmt, cfg.scale_rule, cfg.rounding, seed=(1, 2),
                        backend="torch")[0]
        b = quantize_2d(dy2d.cuda(), ROLE_LAYOUTS[role], cfg.fmt, cfg.scale_rule, cfg.rounding, seed=(1, 2))[0]
        assert_bitwise_equal(a, b.cpu())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elements", type=int, default=10_000_000)
    parser.add_argument("--only", default="", help="comma list: run only the checks whose name contains one of these")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this check needs a CUDA GPU"
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    results: list = []
    only = [part for part in args.only.split(",") if part]
    modes = itertools.product(("1x32", "32x1"), ("e2m1", "e3m0"), ("rceil", "floor"),
                              ("nearest", "even", "stochastic", "ema"), (torch.bfloat16, torch.float32))
    for layout, fmt, rule, rounding, dtype in modes:
        name = f"exact {layout} {fmt} {rule} {rounding} {str(dtype)[6:]}"
        check(name, lambda: kernel_vs_reference(args.elements, layout, fmt, rule, rounding, dtype), results, only)
    fused_modes = itertools.product(("e2m1", "e3m0"), ("rceil", "floor"), ("nearest", "even", "stochastic"),
                                    (torch.bfloat16, torch.float32, torch.float16))
    for fmt, rule, rounding, dtype in fused_modes:
        check(f"exact fused {fmt} {rule} {rounding} {str(dtype)[6:]}",
              lambda: fused_vs_reference(args.elements, fmt, rule, rounding, dtype), results, only)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for part in (boundary_midpoints, boundary_qema_zero_blocks, boundary_saturation):
            check(f"{part.__name__.replace('_', ' ')} {str(dtype)[6:]}", lambda: part(dtype), results, only)
    for dtype in (torch.float32, torch.bfloat16):  # fp16 holds no value whose scaled step is an fp32 subnormal
        check(f"boundary zero draws {str(dtype)[6:]}",
              lambda: check_zero_draws(*zero_draw_case(dtype), device="cuda"), results, only)
    for layout, dtype in itertools.product(("1x32", "32x1"), (torch.bfloat16, torch.float32)):
        check(f"stochastic statistics {layout} {str(dtype)[6:]}", lambda: stochastic_statistics(layout, dtype),
              results, only)
    for recipe in ("tetrajet", "microscaling", "tetrajet_qema", "table7_e3m0_e2m1"):
        check(f"QLinear cuda vs cpu {recipe}", lambda: qlinear_cuda_vs_cpu(recipe), results, only)
    failed = [r for r in results if r[1] != "ok"]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    for name, status, _ in failed:
        print(f"  {name}: {status}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
