"""train.cuda_graph on the CPU: the configuration errors, the graphed step's logic with a capture that launches
eagerly (static buffers, warm-up, partial batches, the learning rate, calibrations and re-capture), and the resume of
an optimizer across capturable settings. A real CUDA-graph capture is checked by scripts/check_compile_gpu.py."""
import copy

import pytest
import torch
from torch import nn

import engine
import main
from configs import ConfigError
from models import build_model
from quantization import QRampingAdamW, QRampingConfig, TrainingContext, get_recipe, method_hooks
from training import (DistContext, GraphedTrainStep, check_cuda_graph_context, eager_capture, load_optimizer_state)

from tests.helpers import TINY_CLI, RecordLog, assert_states_equal, cli_args, error_line, tiny_config

CPU = DistContext(0, 1, torch.device("cpu"))


@pytest.mark.parametrize("override, method, message", [
    ("train.device=cpu", "tetrajet", "train.cuda_graph=true needs a CUDA device, got train.device='cpu'"),
    ("train.amp=fp16", "tetrajet", "cannot be used with train.amp='fp16': its dynamic loss scale (GradScaler)"),
    ("train.compile=inductor", "tetrajet", "cannot be combined with train.compile='inductor'"),
    ("train.amp=bf16", "tseng", "cannot capture recipe 'tseng': its Linear op (TsengConfig) is plain PyTorch"),
    ("train.amp=bf16", "tetrajet_dampen", "cannot capture Dampen (recipe 'tetrajet_dampen')"),
])
def test_what_cuda_graph_cannot_run_is_a_config_error(tmp_path, override, method, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_config(tmp_path, "train.cuda_graph=true", override, method=method)
    assert not tiny_config(tmp_path, method=method).train.cuda_graph  # off by default


def test_cuda_graph_on_the_cpu_exits_2_with_one_line(tmp_path, capsys):
    assert main.main(cli_args(tmp_path / "run", *TINY_CLI, "train.cuda_graph=true", "train.device=cpu")) == 2
    assert "error: train.cuda_graph=true needs a CUDA device, got train.device='cpu'" in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_device_and_process_count_are_checked_when_the_run_starts():
    with pytest.raises(ConfigError, match="needs a CUDA device, but this run is on cpu"):
        check_cuda_graph_context(CPU)
    with pytest.raises(ConfigError, match="runs in one process, but this run has 2"):
        check_cuda_graph_context(DistContext(0, 2, torch.device("cuda", 0)))
    check_cuda_graph_context(DistContext(0, 1, torch.device("cuda", 0)))


def _batches(sizes=(8, 8, 8, 8, 8, 5), seed=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)) for n in sizes]


def _run(recipe, graph_options, *, epochs=1, batches=None, capturable=False, lr_per_step=True):
    """Train a tiny DeiT through engine.train_one_epoch: graph_options None steps eagerly without a graph, else
    the GraphedTrainStep with those options and eager_capture. Returns (model, optimizer, losses, graph)."""
    torch.manual_seed(0)
    model = build_model("deit_tiny_patch16_224", recipe, img_size=28, patch_size=7, in_chans=1, num_classes=10,
                        depth=1, embed_dim=32, num_heads=1, drop_path_rate=0.1)
    hooks = method_hooks(recipe)
    for hook in hooks:
        hook.calibration_steps = 2
    adamw = QRampingAdamW if any(hook.optimizer for hook in hooks) else torch.optim.AdamW
    optimizer = adamw(model.parameters(), lr=1e-3, weight_decay=0.05, foreach=False, capturable=capturable)
    batches = batches or _batches()
    for hook in hooks:
        hook.attach(TrainingContext(model, optimizer, len(batches), epochs * len(batches), None))
    criterion = nn.CrossEntropyLoss()
    graph = None if graph_options is None else GraphedTrainStep(
        model, criterion, optimizer, device=torch.device("cpu"), amp_dtype=None, clip_grad=1.0, hooks=hooks,
        capture=eager_capture, **graph_options)

    def before_step(step):
        if lr_per_step:
            optimizer.param_groups[0]["lr"] = 1e-3 * (1 + step % 3)

    losses = []
    for epoch in range(epochs):
        log = RecordLog()
        engine.train_one_epoch(model, batches, criterion, optimizer, torch.amp.GradScaler("cpu", enabled=False), CPU,
                               epoch, amp_dtype=None, mixup=None, model_ema=None, clip_grad=1.0, logger=log,
                               log_interval=1, first_step=epoch * len(batches), hooks=hooks,
                               calib_batches=lambda step, n: iter(_batches([8] * n, seed=step + 100)),
                               before_step=before_step, graph=graph)
        losses += [r["loss"] for r in log.records if r["type"] == "step"]
        assert all(isinstance(group["lr"], float) for group in optimizer.param_groups)
    return model, optimizer, losses, graph


@pytest.mark.parametrize("recipe", ["tetrajet", "tetrajet_qema"])
def test_replays_compute_what_the_same_steps_compute_eagerly(recipe):
    """Warm-up 2: steps 0-1 eager, step 2 captured, steps 2-4 replayed from the static buffers (each batch copied
    in), the partial last batch eager; drop path and stochastic rounding draw as the eager steps do."""
    graphed = _run(get_recipe(recipe), dict(warmup=2))
    eager = _run(get_recipe(recipe), dict(warmup=100))  # never captures
    assert (graphed[3].captures, graphed[3].replays) == (1, 3) and eager[3].captures == 0
    assert graphed[2] == eager[2] and len(set(graphed[2])) == 6
    assert_states_equal(graphed[0].state_dict(), eager[0].state_dict(), "model")
    assert_states_equal(graphed[1].state_dict(), eager[1].state_dict(), "optimizer")


def test_graphed_step_trains_as_the_eager_loop_does():
    """Against the loop without a graph (a float lr there, an fp32 tensor here), with the learning rate changing at
    every step: the same losses, and weights up to the last bits (1e-5 absolute for the attention's key bias, whose
    gradient is rounding noise that Adam scales up to lr-sized steps)."""
    graphed = _run(get_recipe("bf16"), dict(warmup=1))
    eager = _run(get_recipe("bf16"), None)
    torch.testing.assert_close(graphed[2], eager[2], rtol=1e-6, atol=0)
    for (name, a), b in zip(graphed[0].state_dict().items(), eager[0].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 if name.endswith("qkv.bias") else 1e-7, msg=name)


def test_calibrations_run_eagerly_and_the_step_is_captured_afresh():
    """Q-Ramping calibrates at each epoch start inside GraphedTrainStep.eager(): no replay then, and the graphs are
    captured again after it (its restore replaced the optimizer's state tensors)."""
    recipe = get_recipe("tetrajet_qramping").replace(qramping=QRampingConfig(k1=0.5, k2=2, calib_steps=2))
    graphed = _run(recipe, dict(warmup=1), epochs=2, batches=_batches((8,) * 4))
    eager = _run(recipe, dict(warmup=100), epochs=2, batches=_batches((8,) * 4))
    assert (graphed[3].captures, graphed[3].replays) == (2, 6)
    assert graphed[1].update_periods() and max(int(p.max()) for p in graphed[1].update_periods().values()) > 1
    assert graphed[2] == eager[2]
    assert_states_equal(graphed[0].state_dict(), eager[0].state_dict(), "model")
    assert_states_equal(graphed[1].state_dict(), eager[1].state_dict(), "optimizer")


def test_capturable_qramping_through_the_graphed_step_is_the_host_counter_run():
    """QRampingAdamW(capturable=True) with periods on every parameter (its device path; Triton's interpreter on the
    CPU) under the graphed step equals the host-counter optimizer under the same step, bit for bit."""
    recipe = get_recipe("tetrajet")
    runs = []
    for capturable in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.GELU(), nn.Linear(32, 10))
        optimizer = QRampingAdamW(model.parameters(), lr=1e-3, weight_decay=0.05, backend="triton",
                                  capturable=capturable)
        g = torch.Generator().manual_seed(5)
        optimizer.set_update_periods({p: torch.randint(1, 4, p.shape, generator=g) for p in model.parameters()})
        graph = GraphedTrainStep(model, nn.CrossEntropyLoss(), optimizer, device=torch.device("cpu"), amp_dtype=None,
                                 clip_grad=None, hooks=method_hooks(recipe), warmup=1, capture=eager_capture)
        for step, (x, y) in enumerate(_batches((8,) * 4)):
            optimizer.param_groups[0]["lr"] = 2.0**-9 * (1 + step)  # exact in fp32: the tensor holds the float
            graph.forward_backward(x, y, step)
            graph.optimizer_step()
        runs.append((model, optimizer))
    assert_states_equal(runs[0][0].state_dict(), runs[1][0].state_dict(), "model")
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert_states_equal(runs[0][1].state[p], runs[1][1].state[q], "optimizer state")


def test_eager_context_and_warmup():
    model = nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), foreach=False)
    with pytest.raises(ValueError, match="warmup must be at least 1"):
        GraphedTrainStep(model, nn.MSELoss(), optimizer, device=torch.device("cpu"), amp_dtype=None, clip_grad=None,
                         warmup=0)
    graph = GraphedTrainStep(model, nn.MSELoss(), optimizer, device=torch.device("cpu"), amp_dtype=None,
                             clip_grad=None, warmup=1, capture=eager_capture)
    x, y = torch.randn(3, 4), torch.randn(3, 2)
    for expected in ((0, 0), (1, 1), (1, 2)):  # warm-up step, then capture and replay
        graph.forward_backward(x, y, 0)
        graph.optimizer_step()
        assert (graph.captures, graph.replays) == expected
    with graph.eager():
        graph.forward_backward(x, y, 0)
        graph.optimizer_step()
    assert graph.replays == 2
    for _ in range(2):  # a warm-up step again, then a fresh capture
        graph.forward_backward(x, y, 0)
        graph.optimizer_step()
    assert (graph.captures, graph.replays) == (2, 3)


@pytest.mark.parametrize("saved, loaded", [(False, True), (True, False)])
def test_an_optimizer_resumes_with_the_run_s_capturable_setting(saved, loaded):
    model = nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), capturable=saved, foreach=False)
    model(torch.randn(3, 4)).sum().backward()
    if not saved:  # torch's capturable step runs on a GPU only: a state as a capturable run would hold it
        optimizer.step()
    else:
        for p in model.parameters():
            optimizer.state[p].update(step=torch.tensor(1.0), exp_avg=torch.zeros_like(p),
                                      exp_avg_sq=torch.zeros_like(p))
    state = copy.deepcopy(optimizer.state_dict())
    other = torch.optim.AdamW(nn.Linear(4, 2).parameters(), capturable=loaded, foreach=False)
    load_optimizer_state(other, state, capturable=loaded)
    assert all(group["capturable"] is loaded for group in other.param_groups)
    assert [float(s["step"]) for s in other.state.values()] == [1.0, 1.0]
