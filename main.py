"""Train and evaluate a DeiT/Swin whose block Linears run a quantization recipe (TetraJet, Microscaling, BF16, ...).

    python main.py --config configs/models/deit_tiny.yaml --config configs/methods/tetrajet.yaml --data-path DIR
    torchrun --nproc_per_node=4 main.py ...            # several processes (NCCL on GPUs, gloo on CPU)

Config files merge in order; ``--set section.key=value`` overrides single values. Each run writes config.yaml,
log.jsonl, TensorBoard scalars and checkpoint_{last,best}.pth into its output directory (rank 0 only).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from timm.utils import ModelEmaV3
from torch import nn

import engine
import training
from configs import ConfigError, RunConfig, check_resume_config, load_config, method_label, save_config
from datasets import DatasetNotFoundError, build_datasets, build_loaders, build_mixup, mix_seed
from models import build_model
from quantization import OscillationMonitor, QLinear, TrainingContext, hooks_optimizer, method_hooks

log = logging.getLogger("tetrajet")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
LAST, BEST = "checkpoint_last.pth", "checkpoint_best.pth"
CHECKPOINT_KEYS = ("epoch", "best_acc1", "model", "model_ema", "optimizer", "scheduler", "scaler", "rng")
# Errors in what the user asked for, reported in one line with exit status 2 (ConfigMismatchError is a ConfigError).
USER_ERRORS = (ConfigError, DatasetNotFoundError, training.CheckpointError)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, metavar="YAML",
                        help="config file; repeat to merge several (later files win)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one value, e.g. --set optim.lr=1e-3 (value parsed as YAML)")
    parser.add_argument("--data-path", help="dataset location (same as --set data.path=...)")
    parser.add_argument("--output", help="output directory (same as --set output_dir=...)")
    parser.add_argument("--resume", metavar="PATH|auto",
                        help="continue from a checkpoint; 'auto': the output directory's last one, if any")
    parser.add_argument("--stop-after-epochs", type=int, metavar="N",
                        help="end this invocation after N epochs (the schedule still spans train.epochs)")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides)
    if args.data_path is not None:
        overrides.append(f"data.path={json.dumps(args.data_path)}")
    if args.output is not None:
        overrides.append(f"output_dir={json.dumps(args.output)}")
    return load_config(args.config, overrides)


def model_kwargs(config: RunConfig, num_classes: int) -> dict:
    """timm.create_model arguments of the configured model."""
    cfg = config.model
    kwargs = {"img_size": cfg.img_size, "in_chans": cfg.in_chans, "num_classes": num_classes,
              "drop_path_rate": cfg.drop_path}
    if cfg.patch_size is not None:
        kwargs["patch_size"] = cfg.patch_size
    clash = sorted(set(kwargs) & set(cfg.timm_kwargs))
    if clash:
        raise ConfigError(f"model.timm_kwargs sets {clash}; set them through model.img_size, model.in_chans, "
                          f"model.patch_size and model.drop_path (num_classes comes from the dataset)")
    return {**kwargs, **cfg.timm_kwargs}


def check_batches(config: RunConfig, num_train: int, world_size: int, mixup_on: bool) -> None:
    """Batch-size problems as errors before training starts rather than failures inside a step."""
    local, global_batch = config.data.batch_size, config.data.batch_size * world_size
    if mixup_on and config.aug.mixup_mode == "batch" and local % 2:
        raise ConfigError(f"Mixup/CutMix in batch mode pairs each image with another of its batch: "
                          f"data.batch_size (per process) must be even, got {local}")
    if num_train < global_batch:
        raise ConfigError(f"the training set has {num_train} images, fewer than one global batch of {global_batch} "
                          f"({world_size} process(es) x data.batch_size={local}); lower data.batch_size")


def resolve_resume(resume: Optional[str], output_dir: Path) -> Optional[Path]:
    """The checkpoint to continue from: ``resume`` as a path, or with "auto" the output directory's last one if any."""
    if resume is None:
        return None
    if resume == "auto":
        path = output_dir / LAST
        return path if path.is_file() else None
    return Path(resume)


def read_checkpoint(path: Path) -> dict:
    """training.load plus a check that the file holds every part a resume restores (CheckpointError if not)."""
    state = training.load(path)
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise training.checkpoint_error(path, f"missing keys {missing}: not a checkpoint written by main.py")
    return state


class Trainer:
    """Everything a run holds between epochs, with the checkpoint that captures and restores all of it."""

    def __init__(self, config: RunConfig, ctx: training.DistContext) -> None:
        self.config, self.ctx = config, ctx
        if config.train.cuda_graph:
            training.check_cuda_graph_context(ctx)
        self.output_dir = Path(config.output_dir)
        recipe = config.method.resolved
        training.seed_everything(config.train.seed)  # same on every rank: identical initial weights
        self.data = build_datasets(config.data, config.aug, config.model.img_size, config.model.in_chans)
        self.mixup = build_mixup(config.aug, self.data.num_classes)
        check_batches(config, len(self.data.train), ctx.world_size, self.mixup is not None)
        self.model = build_model(config.model.name, recipe, **model_kwargs(config, self.data.num_classes))
        self.model.to(ctx.device)
        self.model_ema = ModelEmaV3(self.model, decay=config.train.model_ema_decay) if config.train.model_ema \
            else None
        self.global_batch = config.data.batch_size * ctx.world_size
        self.lr = training.scaled_lr(config.optim.lr, self.global_batch)
        self.hooks = method_hooks(recipe)  # the method's training-loop parts (quantization.hooks)
        self.optimizer = training.build_optimizer(self.model, config.optim, self.lr,
                                                  adamw=hooks_optimizer(self.hooks), capturable=config.train.cuda_graph)
        self.amp_dtype = AMP_DTYPES[config.train.amp]
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.train.amp == "fp16")
        self.criterion = training.build_criterion(config.aug, self.mixup is not None)
        # Compiled beneath DDP, which then sees one traced module; checkpoints and evaluation use the eager model.
        self.train_model = self.model if config.train.compile == "eager" else \
            training.compile_model(self.model, config.train.compile)
        if ctx.distributed:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            # Quantizer buffers (Q-EMA, Freeze) are updated identically on every rank: no need to broadcast them.
            self.train_model = nn.parallel.DistributedDataParallel(self.train_model, device_ids=device_ids,
                                                                   broadcast_buffers=False)
        self.loaders = build_loaders(self.data, config.data, config.aug.repeated_aug, config.train.seed, ctx.rank,
                                     ctx.world_size)
        self.total_steps = config.train.epochs * len(self.loaders.train)
        self.scheduler = training.build_scheduler(self.optimizer, config.optim, config.train.epochs,
                                                  len(self.loaders.train), self.global_batch)
        # Hooks keep their state in the model's buffers and the optimizer's state: the checkpoint holds it.
        context = TrainingContext(self.model, self.optimizer, len(self.loaders.train), self.total_steps,
                                  self.amp_dtype, share_from_main=training.broadcast_from_main)
        for hook in self.hooks:
            hook.attach(context)
        self.graph = training.GraphedTrainStep(
            self.train_model, self.criterion, self.optimizer, device=ctx.device, amp_dtype=self.amp_dtype,
            clip_grad=config.optim.clip_grad, hooks=self.hooks) if config.train.cuda_graph else None
        self.calib_batches: Optional[training.CalibrationBatches] = None
        if any(hook.calibration_steps for hook in self.hooks):
            self.calib_batches = training.CalibrationBatches(
                self.data.train, config.data, repeats=config.aug.repeated_aug, seed=config.train.seed, rank=ctx.rank,
                world_size=ctx.world_size, device=ctx.device, mixup=build_mixup(config.aug, self.data.num_classes))
        self.monitor: Optional[OscillationMonitor] = None
        self.start_epoch, self.best_acc1 = 0, float("-inf")  # the first evaluation is always the best yet
        self.saved_epoch: Optional[int] = None

    def state_dict(self, epoch: int) -> dict:
        """The checkpoint after ``epoch``: model, EMA, optimizer, schedule, scaler, every rank's RNG states."""
        return {"epoch": epoch, "best_acc1": self.best_acc1, "world_size": self.ctx.world_size,
                "model": self.model.state_dict(),  # QLinear quantizer state (Q-EMA buffers) included
                "model_ema": self.model_ema.state_dict() if self.model_ema is not None else None,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": training.gather_objects(training.rng_state())}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if self.model_ema is not None:
            if state["model_ema"] is None:
                raise ValueError("train.model_ema is on but the checkpoint has no model EMA")
            self.model_ema.load_state_dict(state["model_ema"])
        training.load_optimizer_state(self.optimizer, state["optimizer"], capturable=self.config.train.cuda_graph)
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.saved_epoch, self.best_acc1 = state["epoch"], state["best_acc1"]
        self.start_epoch = self.saved_epoch + 1
        if len(state["rng"]) == self.ctx.world_size:
            training.set_rng_state(state["rng"][self.ctx.rank])
        else:
            log.warning("checkpoint written by %d processes, resumed by %d: random streams start afresh",
                        len(state["rng"]), self.ctx.world_size)
            training.seed_everything(mix_seed(self.config.train.seed, self.start_epoch, self.ctx.rank))

    def restore(self, state: dict, path: Path) -> None:
        """load_state_dict, with a state that does not fit this run (another model, recipe or optimizer) reported as
        a CheckpointError naming ``path``."""
        try:
            self.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as error:
            raise training.checkpoint_error(path, f"does not fit this run, written by another configuration? "
                                                  f"({training.brief(error)})") from None

    def replicated_state(self) -> dict[str, object]:
        """What every rank must hold bit for bit: the model (parameters and quantizer buffers such as Q-EMA's), the
        model EMA and the optimizer state (moments, Q-Ramping's periods and counters)."""
        state: dict[str, object] = {f"model.{name}": value for name, value in self.model.state_dict().items()}
        if self.model_ema is not None:
            state.update((f"model_ema.{name}", value) for name, value in self.model_ema.state_dict().items())
        for index, entries in self.optimizer.state_dict()["state"].items():
            state.update((f"optimizer.{index}.{key}", value) for key, value in entries.items())
        return state

    def save(self, epoch: int, is_best: bool) -> None:
        # Collectives: every rank takes part. A rank that drifted apart is a bug worth stopping for.
        training.check_replicas(self.replicated_state(), f"after epoch {epoch + 1}")
        state = self.state_dict(epoch)
        if self.ctx.is_main:
            training.save_atomic(state, self.output_dir / LAST)
            if is_best:
                training.save_atomic(state, self.output_dir / BEST)
        training.barrier()
        self.saved_epoch = epoch

    def run_info(self) -> dict:
        quantized = sum(isinstance(m, QLinear) for m in self.model.modules())
        return {"type": "run", "method": method_label(self.config), "recipe": self.config.method.resolved.name,
                "model": self.config.model.name, "params": sum(p.numel() for p in self.model.parameters()),
                "quantized_linears": quantized, "world_size": self.ctx.world_size,
                "global_batch": self.global_batch, "lr": self.lr, "train_images": len(self.data.train),
                "val_images": len(self.data.val), "device": str(self.ctx.device), "torch": torch.__version__,
                "commit": training.source_commit(), "start_epoch": self.start_epoch}

    def stop_note(self) -> str:
        if self.saved_epoch is None:
            return "no checkpoint had been written yet"
        return (f"the last good checkpoint, {self.output_dir / LAST} (after epoch {self.saved_epoch + 1}), is left "
                f"as it was; resume from it with a lower optim.lr, with optim.clip_grad, or with train.amp=fp32")

    def attach_monitor(self, logger: training.RunLogger) -> None:
        """Oscillation metrics into the run log (main rank, when train.osc_interval > 0); it draws no random numbers
        and leaves the model as it was, so training is the same with or without it."""
        cfg = self.config.train
        if not (cfg.osc_interval and self.ctx.is_main):
            return
        probe = torch.stack([self.data.val[i][0] for i in range(min(cfg.osc_probe, len(self.data.val)))])
        self.monitor = OscillationMonitor(self.model, cfg.osc_interval, window=cfg.osc_window, write=logger.write,
                                          tb_writer=logger.tb_writer, probe=probe.to(self.ctx.device),
                                          block=cfg.osc_block, amp_dtype=self.amp_dtype)

    def observe(self, step: int) -> None:
        self.monitor.after_step(step, epoch=step / len(self.loaders.train))

    def evaluate(self, model: nn.Module) -> dict:
        return engine.evaluate(model, self.loaders.val, self.ctx, self.amp_dtype, self.data.num_classes)

    def train_epoch(self, epoch: int, logger: training.RunLogger) -> dict:
        """Train one epoch, evaluate the model (and its EMA), log and checkpoint; returns the epoch's record."""
        self.loaders.set_epoch(epoch)
        self.scheduler.start_epoch(epoch)
        try:
            stats = engine.train_one_epoch(
                self.train_model, self.loaders.train, self.criterion, self.optimizer, self.scaler, self.ctx, epoch,
                amp_dtype=self.amp_dtype, mixup=self.mixup, model_ema=self.model_ema,
                clip_grad=self.config.optim.clip_grad, logger=logger, log_interval=self.config.train.log_interval,
                first_step=epoch * len(self.loaders.train), hooks=self.hooks, calib_batches=self.calib_batches,
                before_step=self.scheduler.before_step,
                after_step=self.observe if self.monitor is not None else None, graph=self.graph)
        except engine.NonFiniteLossError as error:
            raise engine.NonFiniteLossError(f"{error}; run stopped: {self.stop_note()}") from None
        test = self.evaluate(self.model)
        improved = test["acc1"] > self.best_acc1
        self.best_acc1 = max(self.best_acc1, test["acc1"])
        record = {"type": "epoch", "epoch": epoch, **stats, "test_loss": test["loss"], "test_acc1": test["acc1"],
                  "test_acc5": test["acc5"], "best_acc1": self.best_acc1}
        if self.model_ema is not None:
            ema = self.evaluate(self.model_ema.module)
            record.update(ema_acc1=ema["acc1"], ema_acc5=ema["acc5"])
        logger.write(record)  # before the checkpoint: a repeated epoch is logged twice (read_log keeps the last)
        self.save(epoch, improved)
        return record


def epoch_line(record: dict, epochs: int) -> str:
    line = (f"epoch {record['epoch'] + 1}/{epochs}  loss {record['train_loss']:.4f}  lr {record['lr']:.2e}  |  "
            f"top-1 {record['test_acc1']:.2f}  top-5 {record['test_acc5']:.2f}")
    if "ema_acc1" in record:
        line += f"  (EMA {record['ema_acc1']:.2f})"
    line += f"  best {record['best_acc1']:.2f}  |  {record['images_per_s']:.0f} img/s"
    if record["peak_mem_mib"] is not None:
        line += f"  peak {record['peak_mem_mib']:.0f} MiB"
    return line + f"  |  {record['train_time_s']:.0f} s"


def run(config: RunConfig, resume: Optional[str] = None, stop_after_epochs: Optional[int] = None) -> dict:
    """Train (or continue) the run ``config`` defines; returns the last epoch's record.

    Raises engine.NonFiniteLossError, with the state of the last good checkpoint in its message, if the loss
    becomes NaN/Inf. Before anything is written (config.yaml, log.jsonl, checkpoints): configs.ConfigMismatchError if
    ``resume`` is "auto" and the output directory's config.yaml defines another run, configs.ConfigError for a
    setting the model or data cannot take, datasets.DatasetNotFoundError, and training.CheckpointError for a
    checkpoint to resume that is missing, unreadable or of another run. Every process checks config.yaml before the
    process group forms, so none reads it while the main one rewrites it.
    """
    output_dir = Path(config.output_dir)
    if resume == "auto":
        check_resume_config(config, output_dir / "config.yaml")
    checkpoint = resolve_resume(resume, output_dir)
    state = read_checkpoint(checkpoint) if checkpoint is not None else None
    ctx = training.init_distributed(config.train.device)
    trainer = Trainer(config, ctx)
    if state is not None:
        trainer.restore(state, checkpoint)
        log.info("resumed from %s at epoch %d", checkpoint, trainer.start_epoch + 1)
    else:
        if (output_dir / LAST).is_file():
            log.warning("%s already holds %s: this run starts afresh and replaces it (--resume auto continues it)",
                        output_dir, LAST)
        training.seed_everything(config.train.seed + ctx.rank)
    if ctx.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.yaml")
    logger = training.RunLogger(output_dir, ctx.is_main, append=checkpoint is not None)
    trainer.attach_monitor(logger)
    info = trainer.run_info()
    logger.write(info)
    log.info("%s", json.dumps(info))
    record: dict = {}
    try:
        for epoch in range(trainer.start_epoch, config.train.epochs):
            record = trainer.train_epoch(epoch, logger)
            log.info("%s", epoch_line(record, config.train.epochs))
            if stop_after_epochs is not None and epoch + 1 - trainer.start_epoch >= stop_after_epochs:
                break
    finally:
        logger.close()
    return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; exit status 0 when training ends, 1 when the loss diverged, 2 for a user error (a bad
    setting, a missing dataset, a corrupt or mismatched checkpoint), reported as one ``error:`` line."""
    args = parse_args(argv)
    training.setup_console(is_main=os.environ.get("RANK", "0") == "0")
    try:
        config = config_from_args(args)
        record = run(config, resume=args.resume, stop_after_epochs=args.stop_after_epochs)
    except engine.NonFiniteLossError as error:
        log.error("%s", error)
        return 1
    except USER_ERRORS as error:
        log.error("error: %s", " ".join(str(error).split()))
        return 2
    finally:
        training.cleanup()
    if record:
        log.info("final top-1 %.2f (best %.2f) after epoch %d; logs and checkpoints in %s", record["test_acc1"],
                 record["best_acc1"], record["epoch"] + 1, config.output_dir)
    else:
        log.info("nothing to train: %s already holds all %d epochs", config.output_dir, config.train.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
