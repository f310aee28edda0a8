"""Benchmark the MX quantizer kernels and QLinear on a CUDA GPU.

1. Effective bandwidth of each quantizer kernel ((bytes read + written) / median time) next to a plain device copy
   measured in the same run, on a DeiT-S activation (256 x 197 tokens x 384, bf16), launched eagerly and replayed
   from a CUDA graph (the kernel alone: at tens of microseconds a kernel, an eager launch can cost more than it).
2. QLinear forward+backward (bf16 autocast, fp32 master weights) against a BF16 nn.Linear for the DeiT-S shapes
   (tokens = 256 x 197; qkv 384->1152, proj 384->384, fc1 384->1536, fc2 1536->384), launched eagerly and replayed
   from a CUDA graph.

Usage: python scripts/bench_quant.py [--json out.json] [--sweep]
"""
from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import json

import torch
import triton
import triton.testing

from quantization import QLinear, get_format
from quantization.mx import kernels
from training import source_commit

TOKENS = 256 * 197
DEIT_S_SHAPES = {"qkv": (384, 1152), "proj": (384, 384), "fc1": (384, 1536), "fc2": (1536, 384)}


# The stochastic kernels read their seed words from the device.
SEEDS = tuple(torch.tensor(words, dtype=torch.int64, device="cuda") for words in ((1, 2), (3, 4))) \
    if torch.cuda.is_available() else ()


def bench_ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def graph_ms(fn) -> float:
    """Median time of ``fn`` replayed from a CUDA graph: the kernel alone, without the host's launch cost."""
    return triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median")


def timed_row(kernel: str, fn, nbytes: float, copy: dict | None) -> dict:
    """One kernel's row: ``ms`` launched eagerly, ``graph_ms`` replayed from a CUDA graph, and the effective
    bandwidth (``nbytes`` read + written) of each as GB/s and as a share of ``copy``'s (None: this row is the copy)."""
    ms, replay_ms = bench_ms(fn), graph_ms(fn)
    row = dict(kernel=kernel, ms=ms, gbs=nbytes / ms / 1e6, graph_ms=replay_ms, graph_gbs=nbytes / replay_ms / 1e6)
    row["share"] = 1.0 if copy is None else row["gbs"] / copy["gbs"]
    row["graph_share"] = 1.0 if copy is None else row["graph_gbs"] / copy["graph_gbs"]
    return row


def copy_row(x: torch.Tensor) -> dict:
    """A plain device copy of ``x`` (torch clone): the bandwidth the kernels are measured against."""
    return timed_row("copy (torch clone)", lambda: x.clone(), 2 * x.numel() * x.element_size(), None)


def kernel_rows(x: torch.Tensor, copy: dict) -> list[dict]:
    """One row per (layout, rounding, outputs) of the quantize kernel."""
    n = x.numel()
    fmt = get_format("e2m1")
    ema = torch.randn(x.shape, device=x.device, dtype=torch.float32)
    rows = []
    for layout, rounding, outputs in itertools.product(("1x32", "32x1"), ("nearest", "stochastic", "ema"),
                                                       ("values", "values+packed", "packed")):
        want_values, want_packed = "values" in outputs, "packed" in outputs
        read = n * x.element_size() + (n * 4 if rounding == "ema" else 0)
        written = (n * x.element_size() if want_values else 0) + ((n // 2 + n // 32) if want_packed else 0)
        fn = functools.partial(kernels.quantize_2d, x, layout, fmt, "rceil", rounding, ema2d=ema, seed=SEEDS[0],
                               want_values=want_values, want_packed=want_packed)
        rows.append(timed_row(f"quantize {layout} {rounding} -> {outputs}", fn, read + written, copy))
    return rows


def fused_rows(x: torch.Tensor, copy: dict) -> list[dict]:
    """The backward pass's fused kernels: dY into both layouts from one read (Q3 + Q5), and a 1x32-packed tensor
    requantized in 32x1 blocks (Q6 of Q1(X))."""
    fmt = get_format("e2m1")
    n, size = x.numel(), x.element_size()
    _, packed, scales = kernels.quantize_2d(x, "1x32", fmt, "rceil", "nearest", ema2d=None, seed=SEEDS[0],
                                            want_values=False, want_packed=True)
    rows = []
    for rounding in ("nearest", "stochastic"):
        both = functools.partial(kernels.quantize_both_layouts_2d, x, fmt, "rceil", rounding, seeds=SEEDS)
        rows.append(timed_row(f"quantize both layouts {rounding} -> 2x values", both, 3 * n * size, copy))
        requantize = functools.partial(kernels.requantize_2d, packed, scales, fmt, x.shape[1], x.dtype, fmt, "rceil",
                                       rounding, seed=SEEDS[0])
        rows.append(timed_row(f"requantize 1x32 packed -> 32x1 {rounding}", requantize,
                              n // 2 + n // 32 + n * size, copy))
    return rows


def quantizer_rows(x: torch.Tensor) -> list[dict]:
    """The kernel table: the copy, then every quantize mode and layout, dequantize, and the fused kernels."""
    copy = copy_row(x)
    return [copy, *kernel_rows(x, copy), *dequant_rows(x, copy), *fused_rows(x, copy)]


def print_quantizer_rows(rows: list[dict], shape: tuple[int, ...]) -> None:
    print(f"\nquantizer kernels on a {'x'.join(map(str, shape))} bf16 tensor: launched eagerly, and replayed from a "
          f"CUDA graph (no launch cost)")
    print(f"{'kernel':44s} {'ms':>8s} {'of copy':>8s} {'graph ms':>9s} {'GB/s':>6s} {'of copy':>8s}")
    for r in rows:
        print(f"{r['kernel']:44s} {r['ms']:8.4f} {r['share']:8.0%} {r['graph_ms']:9.4f} {r['graph_gbs']:6.0f} "
              f"{r['graph_share']:8.0%}")


def linear_rows() -> list[dict]:
    """QLinear (tetrajet, microscaling) fwd+bwd time against BF16 nn.Linear, per DeiT-S shape and in total:
    launched eagerly (``*_ms``, the host's launch cost included) and replayed from a CUDA graph (``*_graph_ms``,
    the GPU work alone, as in a graphed training step)."""
    recipes = ("bf16", "tetrajet", "microscaling")
    rows, totals = [], {}
    for name, (d_in, d_out) in DEIT_S_SHAPES.items():
        x = torch.randn(TOKENS, d_in, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn(TOKENS, d_out, device="cuda", dtype=torch.bfloat16)
        times = {}
        for recipe in recipes:
            layer = QLinear(d_in, d_out, recipe=recipe).cuda()

            def step():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    y = layer(x)
                y.backward(dy)
                x.grad = None
                layer.weight.grad = None
                layer.bias.grad = None

            times[f"{recipe}_ms"] = bench_ms(step)
            times[f"{recipe}_graph_ms"] = graph_ms(step)
        for key, value in times.items():
            totals[key] = totals.get(key, 0.0) + value
        rows.append(dict(shape=f"{name} {d_in}->{d_out}", **times))
    rows.append(dict(shape="all four", **totals))
    for row in rows:
        for recipe in recipes[1:]:
            row[f"{recipe}_ratio"] = row[f"{recipe}_ms"] / row["bf16_ms"]
            row[f"{recipe}_graph_ratio"] = row[f"{recipe}_graph_ms"] / row["bf16_graph_ms"]
    return rows


def dequant_rows(x: torch.Tensor, copy: dict) -> list[dict]:
    """The dequantize kernel (packed codes + scales -> bf16 values) for both layouts."""
    fmt = get_format("e2m1")
    n = x.numel()
    rows = []
    for layout in ("1x32", "32x1"):
        _, packed, scales = kernels.quantize_2d(x, layout, fmt, "rceil", "nearest", ema2d=None, seed=SEEDS[0],
                                                want_values=False, want_packed=True)
        fn = functools.partial(kernels.dequantize_2d, packed, scales, layout, fmt, x.shape[1], x.dtype)
        rows.append(timed_row(f"dequantize {layout} packed -> values", fn, n // 2 + n // 32 + n * x.element_size(),
                              copy))
    return rows


def profile_tetrajet_fc1() -> list[tuple[str, float]]:
    """CUDA time per kernel name for one tetrajet fc1 fwd+bwd (where the time goes)."""
    d_in, d_out = DEIT_S_SHAPES["fc1"]
    x = torch.randn(TOKENS, d_in, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(TOKENS, d_out, device="cuda", dtype=torch.bfloat16)
    layer = QLinear(d_in, d_out, recipe="tetrajet").cuda()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = layer(x)
        y.backward(dy)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name[:60]] = totals.get(event.name[:60], 0.0) + event.device_time / 10 / 1000
    return sorted(totals.items(), key=lambda kv: -kv[1])


def host_overhead_us() -> dict[str, float]:
    """Host-side cost per call on tiny tensors (GPU work negligible): what a launch-bound step pays."""
    import time

    from quantization import quantize

    x = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    layers = {name: QLinear(64, 64, recipe=name).cuda() for name in ("bf16", "tetrajet")}

    def qlinear(layer):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = layer(x)
        y.backward(torch.ones_like(y))

    calls = {"quantize nearest": lambda: quantize(x.detach()),
             "quantize stochastic": lambda: quantize(x.detach(), rounding="stochastic"),
             "QLinear bf16 fwd+bwd": lambda: qlinear(layers["bf16"]),
             "QLinear tetrajet fwd+bwd": lambda: qlinear(layers["tetrajet"])}
    out = {}
    for name, fn in calls.items():
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(200):
            fn()
        torch.cuda.synchronize()
        out[name] = (time.perf_counter() - start) / 200 * 1e6
    return out


def sweep(x: torch.Tensor) -> list[dict]:
    """Tile-size sweep of every kernel the training step runs, to pick the launch defaults: 1x32 and 32x1 nearest
    values+packed (Q1/Q2 forward) and stochastic values; both layouts stochastic (Q3+Q5); requantize stochastic.
    Each shape is timed replayed from a CUDA graph (the eager time of a 50 us kernel is mostly the host's)."""
    fmt = get_format("e2m1")
    n = x.numel()
    _, packed, scales = kernels.quantize_2d(x, "1x32", fmt, "rceil", "nearest", ema2d=None, seed=SEEDS[0],
                                            want_values=False, want_packed=True)
    cases = {
        "nearest values+packed": (lambda layout, launch: kernels.quantize_2d(
            x, layout, fmt, "rceil", "nearest", ema2d=None, seed=SEEDS[0], want_values=True, want_packed=True,
            launch=launch), n * 4.5 + n / 32),
        "stochastic values": (lambda layout, launch: kernels.quantize_2d(
            x, layout, fmt, "rceil", "stochastic", ema2d=None, seed=SEEDS[0], want_values=True, want_packed=False,
            launch=launch), n * 4),
        "both layouts stochastic": (lambda layout, launch: kernels.quantize_both_layouts_2d(
            x, fmt, "rceil", "stochastic", seeds=SEEDS, launch=launch), n * 6),
        "requantize stochastic": (lambda layout, launch: kernels.requantize_2d(
            packed, scales, fmt, x.shape[1], x.dtype, fmt, "rceil", "stochastic", seed=SEEDS[0], launch=launch),
            n * 2.5 + n / 32),
    }
    out = []
    for case, (fn, nbytes) in cases.items():
        layouts = ("1x32", "32x1") if case in ("nearest values+packed", "stochastic values") else ("32x1",)
        for layout, tile, warps in itertools.product(layouts, (32, 64, 128), (1, 2, 4, 8)):
            launch = dict(num_warps=warps, **({"groups": tile} if layout == "1x32" else {"block_c": tile}))
            ms = graph_ms(lambda: fn(layout, launch))  # eagerly, kernels this short time the host's launch
            out.append(dict(case=case, layout=layout, tile=tile, warps=warps, ms=ms, gbs=nbytes / ms / 1e6))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--sweep", action="store_true", help="also sweep kernel tile sizes")
    parser.add_argument("--commit", help="commit to report (default: this checkout's, else 'unknown')")
    args = parser.parse_args()
    commit = args.commit or source_commit()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, commit {commit}")
    x = torch.randn(TOKENS, 384, device="cuda", dtype=torch.bfloat16)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "commit": commit, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "kernels": quantizer_rows(x)}
    print_quantizer_rows(result["kernels"], tuple(x.shape))
    result["linear"] = linear_rows()
    print(f"\nQLinear fwd+bwd, tokens {TOKENS}, bf16 autocast")
    for suffix, how in (("", "launched eagerly"), ("_graph", "replayed from a CUDA graph")):
        print(how)
        print(f"{'shape':18s} {'bf16 ms':>8s} {'tetrajet':>9s} {'ratio':>6s} {'microsc.':>9s} {'ratio':>6s}")
        for r in result["linear"]:
            print(f"{r['shape']:18s} {r[f'bf16{suffix}_ms']:8.3f} {r[f'tetrajet{suffix}_ms']:9.3f} "
                  f"{r[f'tetrajet{suffix}_ratio']:6.2f} {r[f'microscaling{suffix}_ms']:9.3f} "
                  f"{r[f'microscaling{suffix}_ratio']:6.2f}")
    result["host_overhead_us"] = host_overhead_us()
    print("\nhost-side cost per call (tiny tensors)")
    for name, us in result["host_overhead_us"].items():
        print(f"{us:8.1f} us  {name}")
    result["profile_tetrajet_fc1_ms"] = profile_tetrajet_fc1()
    print("\nwhere the time goes: tetrajet fc1 fwd+bwd, CUDA ms per step by kernel")
    for name, ms in result["profile_tetrajet_fc1_ms"][:14]:
        print(f"{ms:8.4f}  {name}")
    if args.sweep:
        result["sweep"] = sweep(x)
        print("\ntile sweep: the best five per kernel")
        ranked = sorted(result["sweep"], key=lambda r: (r["case"], r["layout"], r["ms"]))
        for key, group in itertools.groupby(ranked, key=lambda r: (r["case"], r["layout"])):
            for r in list(group)[:5]:
                print(f"{key[0]:24s} {key[1]} tile {r['tile']:4d} warps {r['warps']} {r['ms']:.4f} ms "
                      f"{r['gbs']:.0f} GB/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
