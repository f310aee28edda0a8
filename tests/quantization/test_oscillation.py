"""Oscillation metrics on synthetic trajectories with known answers, and the logging callback."""
import copy
import math

import pytest
import torch
from torch import nn

from quantization import QLinear, QuantizerConfig, quantize
from quantization.mx.grid import block_scales
from quantization.oscillation import (CONF_EDGES, RATIO_EDGES, OscillationMonitor, OscillationRatio, RateOfChange,
                                      histogram, quant_conf)


def test_rate_of_change_of_a_geometric_trajectory():
    rate = RateOfChange()
    x = torch.randn(7, 9)
    assert math.isnan(rate.value)
    for t in range(5):
        rate.update(x * 1.1**t)  # each step changes by 10% of the previous value
    assert rate.count == 4 and rate.value == pytest.approx(0.1, rel=1e-5)


def test_rate_of_change_of_a_list_is_that_of_the_concatenation():
    a, b = RateOfChange(), RateOfChange()
    steps = [(torch.tensor([3.0, 0.0]), torch.tensor([4.0])), (torch.tensor([3.0, 0.0]), torch.tensor([4.0 + 2.5]))]
    for x, y in steps:
        a.update([x, y])
        b.update(torch.cat([x, y]))
    assert a.value == b.value == pytest.approx(0.5)  # ||(0, 0, 2.5)|| / ||(3, 0, 4)||


def test_oscillation_ratio_on_known_trajectories():
    tracker = OscillationRatio()
    delta = 2.0**-7
    for t in range(21):
        w = torch.tensor([6.0, 1.25 + (delta if t % 2 else -delta), 0.3 + 0.01 * t, 0.625 + 0.5 * (t // 10), 2.0])
        tracker.update([w], [quantize(w)])
    (ratio,) = tracker.ratios()
    assert ratio.tolist() == [0.0, 32.0, 0.0, 1.0, 0.0]  # oscillating, drifting, stepping, still


@pytest.mark.parametrize("scale_exp", [0, -9, 4])
def test_quant_conf_known_values(scale_exp):
    values = [6.0, 1.25, 1.0, 0.0, 0.125, 2.125, 5.5, 2.0, -1.0, -0.125, 3.0, 2.5, 5.0]
    want = [1.0, 0.0, 1.0, 1.0, 0.5, 1.0, 0.5, 2 / 3, 1.0, 0.5, 1.0, 0.0, 0.0]
    # 2.0 sits in the cell [1.75, 2.5]: 0.25 from its nearest threshold, 0.375 at most; 6.0 and 5.5 are in the top
    # cell, whose only threshold is 5.
    w = torch.tensor(values) * 2.0**scale_exp
    torch.testing.assert_close(quant_conf(w, QuantizerConfig()), torch.tensor(want))


def test_quant_conf_of_clipped_values_is_one():
    w = torch.tensor([31.0, 4.0, 5.0])  # OCP scale 4: 31/4 = 7.75 lies beyond 6 (clipped), 5/4 on a threshold
    conf = quant_conf(w, QuantizerConfig(scale_rule="floor"))
    assert conf.tolist() == [1.0, 1.0, 0.0]


def test_histogram_bins():
    values = torch.tensor([0.0, 0.5, 1.0, 16.0, 17.0, 1e6])
    assert histogram(values, RATIO_EDGES) == [2, 1, 0, 0, 0, 2, 0, 0, 0, 1]  # 16 and 17 in [16, 32)
    assert histogram(torch.tensor([0.0, 0.04, 1.0]), CONF_EDGES)[0] == 2
    assert histogram(torch.tensor([0.0, 0.04, 1.0]), CONF_EDGES)[-1] == 1  # the last bin is closed


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(QLinear(16, 32, recipe="tetrajet"), nn.GELU(), QLinear(32, 16, recipe="tetrajet"))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.blocks(x))


def _run(monitor, model, optimizer, steps):
    g = torch.Generator().manual_seed(0)
    records, snapshots = [], []
    for step in range(steps):
        optimizer.zero_grad()
        model(torch.randn(64, 16, generator=g)).square().mean().backward()
        optimizer.step()
        snapshots.append([copy.deepcopy(model.blocks[0].weight.detach()), copy.deepcopy(model.blocks[2].weight.detach())])
        if monitor is not None:
            record = monitor.after_step(step, epoch=step / 10)
            if record is not None:
                records.append(record)
    return records, snapshots


@pytest.mark.slow
def test_monitor_logs_windows_and_leaves_training_unchanged():
    torch.manual_seed(0)
    model = _Net()
    twin = copy.deepcopy(model)
    written = []
    probe = torch.randn(5, 16)
    monitor = OscillationMonitor(model, interval=10, window=4, write=written.append, probe=probe, block="blocks.0",
                                 traces=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1)
    records, snapshots = _run(monitor, model, optimizer, 25)
    torch.manual_seed(1)
    _, twin_snapshots = _run(None, twin, torch.optim.SGD(twin.parameters(), lr=0.1), 25)
    for ours, theirs in zip(snapshots, twin_snapshots):  # no random numbers taken, nothing changed
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert model.training
    assert [r["step"] for r in records] == [4, 14, 24] and written == records
    record = records[0]
    expected = RateOfChange()
    for weights in snapshots[0:5]:
        expected.update(weights)
    assert record["r_w"] == pytest.approx(expected.value) and record["epoch"] == 0.4
    assert record["thresholds"] == [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    assert 0 < record["r_q"] and 0 < record["r_y"] and 0 <= record["osc_share"] <= 1
    assert sum(record["osc_hist"]["counts"]) == sum(w.numel() for w in snapshots[0])
    assert sum(record["quantconf_hist"]["counts"]) == sum(w.numel() for w in snapshots[0])
    assert 0 < record["quantconf_mean"] < 1
    trace = record["traces"][0]
    assert len(record["traces"]) == 3 and trace["layer"] == "blocks.0" and len(trace["v"]) == len(trace["q"]) == 5
    for t in range(5):  # the traced latent weight and its forward quantization, both divided by the block scale
        w = snapshots[t][0]
        scale = block_scales(w, "e2m1", "rceil").flatten()[trace["index"]]
        assert trace["v"][t] == pytest.approx(float(w.flatten()[trace["index"]] / scale))
        assert trace["q"][t] == float(quantize(w).flatten()[trace["index"]] / scale)
    assert monitor.after_step(25) is None and monitor.after_step(27) is None  # outside a window: nothing


def test_monitor_arguments():
    model = _Net()
    with pytest.raises(ValueError, match="need 1 <= window < interval, got window=10, interval=10"):
        OscillationMonitor(model, interval=10, window=10)
    with pytest.raises(ValueError, match="probe and block go together"):
        OscillationMonitor(model, interval=10, window=2, probe=torch.randn(2, 16))
    with pytest.raises(ValueError, match="unknown trace_layer 'head'; valid choices: blocks.0, blocks.2"):
        OscillationMonitor(model, interval=10, window=2, trace_layer="head")


def test_plot_script_makes_the_four_figures(tmp_path):
    pytest.importorskip("matplotlib")
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("plot_oscillation", "scripts/plot_oscillation.py")
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    runs = []
    for method in ("bf16", "tetrajet"):
        torch.manual_seed(0)
        model = _Net()
        for i in (0, 2):
            model.blocks[i] = QLinear.from_linear(model.blocks[i], method)
        run = tmp_path / method
        run.mkdir()
        lines = [{"type": "run", "method": method}]
        monitor = OscillationMonitor(model, interval=6, window=3, write=lines.append, probe=torch.randn(4, 16),
                                     block="blocks.2")
        _run(monitor, model, torch.optim.SGD(model.parameters(), lr=0.2), 16)
        run.joinpath("log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        runs.append(str(run))
    written = plot.main([*runs, "--out", str(tmp_path / "figures")])
    assert [p.name for p in written] == ["fig2_rate_of_change.png", "fig3_oscillating_weights.png",
                                         "fig5_quantconf.png", "fig6_oscillating_share.png"]
    assert all(p.stat().st_size > 10_000 for p in written)
    with pytest.raises(ValueError, match="no oscillation window ends at step 5; windows end at"):
        plot.main([*runs, "--out", str(tmp_path / "figures"), "--step", "5"])


@pytest.mark.slow
def test_nearest_activation_rounding_sets_a_floor_under_r_y():
    """Why r(Y) of a quantized ViT stays high when the weights barely move (docs/proxy-study.md): in the proxy's
    model (width 192, 8 blocks) nudging one unquantized bias element of block 0 by 1e-3 changes block 6's output by
    about 5% when Q1 rounds the activations, and by about 0.02% without Q1; the model is left as it was."""
    import dataclasses

    from models import build_model
    from quantization import get_recipe, nudged_output_change

    probe = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    changes = {}
    for name, recipe in (("tetrajet", get_recipe("tetrajet")),
                         ("no q1", dataclasses.replace(get_recipe("tetrajet"), q1=None))):
        torch.manual_seed(0)
        model = build_model("deit_tiny_patch16_224", recipe, img_size=28, patch_size=4, in_chans=1, num_classes=10,
                            depth=8)
        before = copy.deepcopy(model.state_dict())
        changes[name] = nudged_output_change(model, "blocks.6", probe, model.blocks[0].attn.proj.bias)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert changes["tetrajet"] > 0.02 and changes["no q1"] < changes["tetrajet"] / 30


def test_monitor_places_weights_where_the_bf16_forward_quantizes_them():
    """Under bf16 autocast the traces and QuantConf use the bf16-cast weight, as Q(W) does: each traced v rounds to
    its q (a weight whose bf16 cast is a tie must not look like one just below the threshold)."""
    torch.manual_seed(0)
    model = _Net()
    monitor = OscillationMonitor(model, interval=10, window=3, traces=4, amp_dtype=torch.bfloat16)
    torch.manual_seed(1)
    records, snapshots = _run(monitor, model, torch.optim.SGD(model.parameters(), lr=0.1), 4)
    trace = records[0]["traces"][0]
    for t in range(4):
        w = snapshots[t][0].to(torch.bfloat16)
        scale = block_scales(w, "e2m1", "rceil").flatten()[trace["index"]]
        assert trace["v"][t] == pytest.approx(float(w.float().flatten()[trace["index"]] / scale.float()))
        assert trace["q"][t] == float(quantize(w).float().flatten()[trace["index"]] / scale.float())
