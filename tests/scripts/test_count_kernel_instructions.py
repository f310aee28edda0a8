"""scripts/count_kernel_instructions.py compiles every quantizer kernel for sm_90 on the CPU and counts its SASS."""
import json
import os
import subprocess
import sys

from tests.helpers import REPO


def test_counts_every_kernel_and_stochastic_rounding_costs_more(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = tmp_path / "counts.json"
    subprocess.run([sys.executable, "scripts/count_kernel_instructions.py", "--json", str(out)], cwd=REPO, env=env,
                   check=True, capture_output=True, timeout=600)
    table = json.loads(out.read_text())["rows"]
    assert all(0 < r["alu_per_element"] < r["per_element"] <= r["cycles_per_32"] and 16 <= r["registers"] <= 255
               for r in table), table
    rows = {r["kernel"]: r["per_element"] for r in table}
    assert len(rows) == 12 and all(10 < n < 200 for n in rows.values()), rows
    for kernel in ("1x32 {} -> values", "both layouts {}", "requantize {}"):
        assert rows[kernel.format("stochastic")] > rows[kernel.format("nearest")]
    assert rows["both layouts nearest + column sums"] > rows["both layouts nearest"]


def test_refuses_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "scripts/count_kernel_instructions.py"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "TRITON_INTERPRET=1 is set" in run.stderr
