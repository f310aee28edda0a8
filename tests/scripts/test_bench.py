"""CPU tests of scripts/bench.py's pure parts: argument validation, ratios, targets, GPU-hours, the table, and the
commit it reports."""
import shutil
import subprocess
import sys

import pytest
import torch

import bench
from training import provenance


def run(model, method, step_ms, peak_mib, calibration_s=None):
    return dict(model=model, method=method, step_ms=step_ms, peak_mib=peak_mib, calibration_s=calibration_s)


def test_defaults_and_model_names():
    args = bench.parse_args([])
    assert args.models == ["deit_tiny", "deit_small", "deit_base"]
    assert args.methods == list(bench.METHODS)
    assert bench.MODELS["deit_small"] == "deit_small_patch16_224"
    assert (args.batch, args.img_size, args.steps, args.warmup) == (256, 224, 30, 10)
    args = bench.parse_args(["--methods", "tetrajet, bf16,tetrajet", "--models", "swin_tiny"])
    assert args.methods == ["tetrajet", "bf16"]
    assert args.models == ["swin_tiny"]


@pytest.mark.parametrize("argv, message", [
    (["--methods", "bf16,tetrajet_ema"], "unknown method 'tetrajet_ema'; valid choices: bf16, tetrajet, "
                                         "tetrajet_qema, tetrajet_qramping"),
    (["--methods", ","], "unknown method (none given)"),
    (["--models", "vit_huge"], "unknown model 'vit_huge'; valid choices: deit_tiny"),
    (["--batch", "0"], "expected an integer >= 1, got '0'"),
])
def test_bad_arguments_name_the_valid_choices(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_without_cuda_exits_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="bench.py needs a CUDA GPU"):
        bench.main(["--methods", "bf16"])


def test_gpu_hours():
    # 90 epochs x ceil(1281167 / 256) = 5005 steps of 100 ms.
    assert bench.gpu_hours(100.0, 256) == pytest.approx(90 * 5005 * 0.1 / 3600)
    assert bench.gpu_hours(100.0, 1281167) == pytest.approx(90 * 0.1 / 3600)


def test_summarize_ratios_amortization_and_targets():
    runs = [run("deit_small", "bf16", 100.0, 1000.0), run("deit_small", "tetrajet", 120.0, 1150.0),
            run("deit_small", "tetrajet_qema", 140.0, 1200.0),
            run("deit_small", "tetrajet_qramping", 130.0, 1300.0, calibration_s=12.51),
            run("deit_tiny", "tetrajet", 50.0, 500.0)]
    rows = {(r["model"], r["method"]): r for r in bench.summarize(runs, batch=256, steps_per_epoch=1251)}
    tetrajet = rows["deit_small", "tetrajet"]
    assert tetrajet["ratio"] == pytest.approx(1.2) and tetrajet["target"] == "<=1.15x MISS"
    assert tetrajet["mem_ratio"] == pytest.approx(1.15) and tetrajet["mem_target"] == "<=0.85x MISS"
    assert tetrajet["amortized_ms"] is None and tetrajet["images_per_s"] == pytest.approx(256 / 0.12)
    assert rows["deit_small", "tetrajet_qema"]["target"] == "<=1.20x MISS"
    ramping = rows["deit_small", "tetrajet_qramping"]
    assert ramping["amortized_ms"] == pytest.approx(140.0)  # + 12.51 s / 1251 steps
    assert ramping["ratio"] == pytest.approx(1.3) and ramping["amortized_ratio"] == pytest.approx(1.4)
    assert ramping["target"] == "<=1.25x MISS" and ramping["mem_target"] == ""
    assert ramping["gpu_hours_90_epochs"] == pytest.approx(bench.gpu_hours(140.0, 256))
    bf16 = rows["deit_small", "bf16"]
    assert bf16["ratio"] == 1.0 and bf16["target"] == ""
    alone = rows["deit_tiny", "tetrajet"]  # no bf16 run of that model
    assert alone["ratio"] is None and alone["mem_ratio"] is None and alone["target"] == "<=1.15x ?"


def test_step_ratios_use_the_faster_bf16_step_and_memory_the_same_stepping():
    runs = [run("deit_tiny", "bf16", 30.0, 1000.0), run("deit_tiny", "tetrajet", 60.0, 900.0),
            dict(run("deit_tiny", "bf16", 20.0, 1100.0), graph=True),
            dict(run("deit_tiny", "tetrajet", 22.0, 935.0), graph=True)]
    rows = bench.summarize(runs, batch=256, steps_per_epoch=1251)
    assert [r["ratio"] for r in rows] == [1.5, 3.0, 1.0, pytest.approx(1.1)]  # against the faster bf16 step
    assert [r["mem_ratio"] for r in rows] == [1.0, 0.9, 1.0, pytest.approx(0.85)]  # against bf16 stepped alike
    assert rows[3]["target"] == "<=1.15x ok" and rows[1]["target"] == "<=1.15x MISS"
    assert rows[3]["mem_target"] == "<=0.85x ok" and rows[1]["mem_target"] == "<=0.85x MISS"
    lines = bench.format_table(rows).splitlines()
    assert lines[4].startswith("tetrajet +graph ") and lines[2].startswith("tetrajet ")
    assert bench.parse_args(["--cuda-graph"]).cuda_graph and not bench.parse_args([]).cuda_graph


def test_format_table_layout():
    runs = [run("deit_small", "bf16", 100.0, 1000.0),
            run("deit_small", "tetrajet_qramping", 130.0, 1300.0, calibration_s=12.51)]
    lines = bench.format_table(bench.summarize(runs, 256, 1251)).splitlines()
    assert len(lines) == 3
    assert lines[0].split() == ["method", "step", "ms", "x", "bf16", "amort", "ms", "x", "bf16", "target", "peak",
                                "MiB", "x", "bf16", "target", "img/s", "GPU-h", "90ep"]
    assert lines[1].split() == ["bf16", "100.0", "1.00x", "-", "-", "1000", "1.00x", "2560", "12.5"]
    assert lines[2].split()[:8] == ["tetrajet_qramping", "130.0", "1.30x", "140.0", "1.40x", "<=1.25x", "MISS",
                                    "1300"]
    assert len({len(line) for line in lines}) == 1  # columns line up


def test_extra_kernel_ms_counts_kernels_only_the_profiled_step_runs_in_full():
    bf16 = dict(kernels_ms=[("gemm", 10.0), ("layer_norm", 2.0)])
    tetrajet = dict(kernels_ms=[("gemm", 10.5), ("_quantize_1x32_kernel", 3.0), ("layer_norm", 2.0)])
    assert bench.extra_kernel_ms(tetrajet, bf16) == [("_quantize_1x32_kernel", 3.0), ("gemm", 0.5),
                                                     ("layer_norm", 0.0)]


def test_bound_by():
    assert bench.bound_by(95.0, 100.0) == "GPU-bound"
    assert bench.bound_by(60.0, 100.0) == "host-bound"


def test_source_commit_is_this_checkouts_and_unknown_in_a_copy_inside_another_repository(tmp_path):
    """A copy of the project without its .git inside another repository must not report that repository's commit."""
    head = subprocess.run(["git", "-C", str(provenance.PROJECT_ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert provenance.source_commit().split("+")[0] == head
    outer = tmp_path / "outer"
    subprocess.run(["git", "init", "-q", str(outer)], check=True)
    copy = outer / "project" / "training"
    shutil.copytree(provenance.PROJECT_ROOT / "training", copy)
    result = subprocess.run([sys.executable, "-c", "import provenance; print(provenance.source_commit())"],
                            cwd=copy, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "unknown"


def test_source_commit_takes_the_commit_a_shipped_copy_is_given(monkeypatch):
    monkeypatch.setenv(provenance.COMMIT_ENV, "abc1234")
    assert provenance.source_commit() == "abc1234"
    monkeypatch.setenv(provenance.COMMIT_ENV, "")
    assert provenance.source_commit() != "abc1234"
