"""training.build_scheduler: DeiT's per-epoch schedule exactly as before, Swin's per-iteration schedule with a
warm-up prefix and batch-scaled warm-up and minimum rates."""
import math

import pytest
import torch
from timm.scheduler import create_scheduler_v2

from configs import OptimConfig, load_config
from training import build_scheduler

from tests.helpers import REPO


def _optimizer(lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def test_deit_schedule_is_timms_per_epoch_cosine_with_unscaled_warmup_and_min_lr():
    cfg = load_config([REPO / "configs" / "models" / "deit_small.yaml"]).optim
    assert (cfg.sched_interval, cfg.warmup_prefix, cfg.scale_warmup_min_lr) == ("epoch", False, False)
    ours, before = _optimizer(1e-3), _optimizer(1e-3)  # global batch 1024: lr 5e-4 x 2
    schedule = build_scheduler(ours, cfg, epochs=90, steps_per_epoch=100, global_batch=1024)
    previous, _ = create_scheduler_v2(before, sched="cosine", num_epochs=90, warmup_epochs=cfg.warmup_epochs,
                                      warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr)
    for epoch in range(95):
        schedule.start_epoch(epoch)
        previous.step(epoch)
        assert _lr(ours) == _lr(before), epoch
        for step in (epoch * 100, epoch * 100 + 57):
            schedule.before_step(step)  # no effect per epoch
            assert _lr(ours) == _lr(before), (epoch, step)
    schedule.start_epoch(0)
    assert _lr(ours) == 1e-6  # warm-up start, not scaled
    schedule.start_epoch(89)
    assert 1e-5 < _lr(ours) < 1.1e-5  # near min_lr, not scaled
    schedule.start_epoch(3)
    assert _lr(ours) == pytest.approx(1e-6 + 3 * (1e-3 - 1e-6) / 5)


def test_swin_schedule_steps_per_iteration_after_a_warmup_prefix_with_scaled_rates():
    # 3 epochs of 4 iterations, 1 warm-up epoch, global batch 1024: base 1e-3, warm-up 1e-6, minimum 1e-5.
    cfg = OptimConfig(lr=5e-4, warmup_epochs=1, warmup_lr=5e-7, min_lr=5e-6, sched_interval="step",
                      warmup_prefix=True, scale_warmup_min_lr=True)
    optimizer = _optimizer(1e-3)
    schedule = build_scheduler(optimizer, cfg, epochs=3, steps_per_epoch=4, global_batch=1024)
    base, warmup, low = 1e-3, 1e-6, 1e-5
    assert _lr(optimizer) == pytest.approx(warmup)

    def cosine(t):  # over the 8 iterations after the warm-up
        return low + 0.5 * (base - low) * (1 + math.cos(math.pi * t / 8))

    expected = {0: warmup, 1: warmup + (base - warmup) / 4, 3: warmup + 3 * (base - warmup) / 4, 4: base,
                5: cosine(1), 8: cosine(4), 11: cosine(7)}
    for step, value in expected.items():
        schedule.start_epoch(step // 4)  # no effect per iteration
        schedule.before_step(step)
        assert _lr(optimizer) == pytest.approx(value, rel=1e-12), step
    assert cosine(4) == pytest.approx((base + low) / 2)


@pytest.mark.parametrize("name", ["swin_tiny", "swin_small"])
def test_swin_files_follow_the_official_recipe(name):
    config = load_config([REPO / "configs" / "models" / f"{name}.yaml"])
    optim = config.optim
    assert (optim.sched_interval, optim.warmup_prefix, optim.scale_warmup_min_lr) == ("step", True, True)
    assert (optim.lr, optim.warmup_lr, optim.min_lr, optim.weight_decay) == (5e-4, 5e-7, 5e-6, 0.05)
    assert (optim.warmup_epochs, optim.clip_grad, config.train.epochs) == (20, 5.0, 90)
    assert config.model.drop_path == {"swin_tiny": 0.2, "swin_small": 0.3}[name]
    assert (config.aug.repeated_aug, config.aug.color_jitter, config.train.model_ema) == (1, 0.4, False)
