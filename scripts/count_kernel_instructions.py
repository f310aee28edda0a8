"""Count the machine instructions the quantizer kernels issue per element, without a GPU.

Compiles each kernel of quantization/mx/kernels.py for an sm_90 (H100/H200) target on this machine, with the
launch shapes the ops use and the argument divisibility Triton's JIT infers for DeiT tensors (every pointer and
size a multiple of 16), disassembles the cubin with the cuobjdump bundled with Triton and divides the SASS
instructions of the (loop-free) kernel by the elements one thread handles, in all and those of the integer/logic
pipe (ALU). It also reads the registers a thread uses, which bound how many warps an SM holds. The kernels are bound
by instruction issue, not bytes (docs/performance.md): an H100/H200 scheduler issues one warp instruction a cycle,
but the ALU pipe (integer add/shift/logic, min/max, compares and selects, integer or float) takes two cycles for
one, so ``cycles`` = max(instructions, 2 x ALU instructions) per 32 elements predicts a kernel's speed. It is the
quick check of a change; the GPU timings of scripts/bench_quant.py stay the measurement.

Usage: python scripts/count_kernel_instructions.py [--json counts.json]   (not under TRITON_INTERPRET=1)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from quantization.mx import kernels
from quantization.mx.backends import triton_interpreted
from quantization.mx.formats import Rounding

TARGET = GPUTarget("cuda", 90, 32)
E2M1 = dict(EXP_BITS=2, MAN_BITS=1)
QUANTIZER = dict(RCEIL=True, WIDE=False, IS_BF16=True, OVERFLOW_EXP=1000, **E2M1)
INSTRUCTION = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?P<text>[^;]*);")
REGISTERS = re.compile(r"REG:(?P<count>\d+)")
# Opcodes issued to the 16-lane ALU pipe of an sm_90 SM sub-partition (the float min/max, compares and selects
# included); fp32 add/mul/fma and IMAD go to the FMA pipes, conversions to a slower one.
ALU_OPCODES = frozenset({"LOP3", "LOP", "IADD3", "VIADD", "SHF", "LEA", "PRMT", "VIMNMX", "VIMNMX3", "IMNMX", "ISETP",
                         "SEL", "FSETP", "FSET", "FSEL", "FMNMX", "PLOP3", "IABS", "MOV"})


def compile_kernel(fn, signature: dict[str, str], constexprs: dict, num_warps: int):
    """``fn`` compiled for TARGET; every non-constexpr argument is marked divisible by 16."""
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in signature}
    source = ASTSource(fn=fn, signature={**signature, **{name: "constexpr" for name in constexprs}},
                       constexprs={(fn.arg_names.index(name),): value for name, value in constexprs.items()},
                       attrs=attrs)
    return triton.compile(source, target=TARGET, options={"num_warps": num_warps})


def _cuobjdump(compiled, option: str) -> str:
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        return subprocess.run([cuobjdump, option, cubin.name], capture_output=True, text=True, check=True).stdout


def sass_instructions(compiled) -> list[str]:
    """The kernel's SASS instructions (NOPs and the trailing self-branch left out)."""
    found = (INSTRUCTION.match(line) for line in _cuobjdump(compiled, "-sass").splitlines())
    return [m["text"].strip() for m in found if m and not m["text"].strip().startswith(("NOP", "BRA"))]


def registers(compiled) -> int:
    """Registers a thread of the kernel uses."""
    return int(REGISTERS.search(_cuobjdump(compiled, "-res-usage"))["count"])


def opcode(instruction: str) -> str:
    """An instruction's opcode without modifiers or predicate ("@!P0 LOP3.LUT R1, ..." -> "LOP3")."""
    words = instruction.split()
    return (words[1] if words[0].startswith("@") else words[0]).split(".")[0]


def cases() -> list[tuple[str, object, dict, dict, int, int]]:
    """(name, kernel, signature, constexprs, warps, elements per program) at the ops' launch defaults."""
    one = kernels.LAUNCH_1X32
    both, requant = kernels.LAUNCH_BOTH_LAYOUTS, kernels.LAUNCH_REQUANTIZE
    sig_1x32 = dict(x_ptr="*bf16", ema_ptr="*fp32", y_ptr="*bf16", packed_ptr="*u8", scales_ptr="*u8", rows="i32",
                    cols="i32", pstride="i32", seed_ptr="*i32")
    sig_both = dict(x_ptr="*bf16", y_rows_ptr="*bf16", y_cols_ptr="*bf16", sums_ptr="*fp32", rows="i32",
                    half_cols="i32", seed_rows_ptr="*i32", seed_cols_ptr="*i32")
    sig_requant = dict(packed_ptr="*u8", scales_ptr="*u8", y_ptr="*bf16", rows="i32", half_cols="i32",
                       scale_stride="i32", seed_ptr="*i32")
    out = []
    for rounding in (Rounding.NEAREST, Rounding.STOCHASTIC):
        name = rounding.name.lower()
        for write_y, write_packed, what in ((True, False, "values"), (True, True, "values+packed"),
                                            (False, True, "packed")):
            out.append((f"1x32 {name} -> {what}", kernels._quantize_1x32_kernel, sig_1x32,
                        dict(GROUPS=one["groups"], WHOLE_BLOCKS=True, WRITE_Y=write_y, WRITE_PACKED=write_packed,
                             ROUNDING=rounding.value, **QUANTIZER), one["num_warps"], one["groups"] * 32))
        for sums in (False, True):
            out.append((f"both layouts {name}{' + column sums' if sums else ''}", kernels._quantize_both_layouts_kernel,
                        sig_both, dict(BLOCK_C=both["block_c"], WRITE_SUMS=sums, ROUNDING=rounding.value,
                                       **QUANTIZER), both["num_warps"], 32 * both["block_c"]))
        out.append((f"requantize {name}", kernels._requantize_kernel, sig_requant,
                    dict(BLOCK_C=requant["block_c"], IN_EXP_BITS=2, IN_MAN_BITS=1, ROUNDING=rounding.value,
                         **QUANTIZER), requant["num_warps"], 32 * requant["block_c"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the counts to this file")
    args = parser.parse_args()
    if triton_interpreted():
        parser.error("TRITON_INTERPRET=1 is set: the kernels are then interpreted, not compiled; unset it")
    rows = []
    print(f"SASS for sm_90 (Triton {triton.__version__}), bf16 input, e2m1, rceil")
    print(f"{'kernel':40s} {'per thread':>10s} {'per element':>12s} {'ALU':>6s} {'cycles/32':>9s} {'registers':>9s}")
    for name, fn, signature, constexprs, warps, elements in cases():
        compiled = compile_kernel(fn, signature, constexprs, warps)
        instructions = sass_instructions(compiled)
        per_element = len(instructions) * warps * 32 / elements
        alu = sum(opcode(i) in ALU_OPCODES for i in instructions) * warps * 32 / elements
        row = dict(kernel=name, per_thread=len(instructions), per_element=round(per_element, 1),
                   alu_per_element=round(alu, 1), cycles_per_32=round(max(per_element, 2 * alu), 1),
                   registers=registers(compiled))
        rows.append(row)
        print(f"{name:40s} {row['per_thread']:10d} {per_element:12.1f} {alu:6.1f} {row['cycles_per_32']:9.1f} "
              f"{row['registers']:9d}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": triton.__version__, "target": "sm_90", "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
