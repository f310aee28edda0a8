"""Export a trained run as MXFP4: every quantized Linear's forward weight (Q2(W), Q-EMA applied where the recipe uses
it) packed as E2M1 codes plus E8M0 block scales in a safetensors file, the rest as the evaluation consumes it
(quantization/export.py). Prints the file's size against the same model's weights in bf16 and, with --evaluate, the
top-1 evaluated from the packed file beside the one the run logged for that checkpoint.

Usage: python scripts/export_mxfp4.py RUN_DIR [--output FILE] [--checkpoint last|best] [--weights model|ema]
                                      [--rest eval|bf16] [--evaluate] [--data-path DIR] [--device auto|cpu|cuda]

--weights model (the default) exports the weights behind the run's reported top-1 (test_acc1); --weights ema those
of the model EMA (ema_acc1), when the run kept one. The evaluation rebuilds the model from the run's config.yaml with
the recipe's q2 off, so Q1 still quantizes the activations and only the weights come from the file; on the device
and with the batch size the run evaluated with, it reproduces the logged top-1 exactly. A user error (missing run
directory or checkpoint, a corrupt checkpoint, a recipe whose weights are not MXFP4, a missing dataset) ends with
one "error:" line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import timm
import torch
from torch import nn

import engine
import training
from configs import ConfigError, config_to_dict, load_config
from datasets import build_datasets, build_loaders
from main import AMP_DTYPES, BEST, LAST, USER_ERRORS, model_kwargs
from models import build_model
from quantization import ExportError, Recipe, check_exportable, eval_recipe, load_mxfp4, save_mxfp4
from quantization.export import header_nbytes, state_nbytes
from training import CheckpointError
from training.logger import read_log

WEIGHTS = {"model": ("model", "test_acc1"), "ema": ("model_ema", "ema_acc1")}  # checkpoint key, logged top-1
CHECKPOINTS = {"last": LAST, "best": BEST}
MIB = 2**20


class RunDirError(Exception):
    """RUN_DIR is not the output directory of a main.py run."""


def parse_args(argv: "list[str] | None" = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a main.py output directory (config.yaml, log.jsonl, checkpoints)")
    parser.add_argument("--output", type=Path, help="the file to write (default RUN_DIR/mxfp4-CHECKPOINT-WEIGHTS"
                                                    ".safetensors)")
    parser.add_argument("--checkpoint", choices=CHECKPOINTS, default="last", help="checkpoint_last or _best")
    parser.add_argument("--weights", choices=WEIGHTS, default="model",
                        help="the trained model (what the run's top-1 reports) or its model EMA")
    parser.add_argument("--rest", choices=("eval", "bf16"), default="eval",
                        help="non-quantized tensors in the dtype the evaluation consumes (exact) or all in bf16")
    parser.add_argument("--evaluate", action="store_true", help="evaluate from the packed file and compare")
    parser.add_argument("--data-path", help="dataset location, if not the run's data.path")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="evaluation device (default: the run's)")
    return parser.parse_args(argv)


def read_run_config(run_dir: Path, data_path: "str | None"):
    """The run's configuration from its config.yaml (data.path replaced when given)."""
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no config.yaml: not a main.py output directory")
    return load_config([path], [f"data.path={json.dumps(data_path)}"] if data_path is not None else [])


def run_record(run_dir: Path) -> dict:
    """The run's last "run" log record (recipe name, commit), {} without a log."""
    runs = read_log(run_dir, "run") if (run_dir / "log.jsonl").is_file() else []
    return runs[-1] if runs else {}


def logged_top1(run_dir: Path, epoch: int, weights: str) -> "float | None":
    """The top-1 the run logged after ``epoch`` (0-based) for ``weights``, None if not logged."""
    if not (run_dir / "log.jsonl").is_file():
        return None
    records = [r for r in read_log(run_dir, "epoch") if r["epoch"] == epoch]
    return records[0].get(WEIGHTS[weights][1]) if records else None


def checkpoint_weights(path: Path, weights: str) -> tuple[dict, int]:
    """The model (or model EMA) state dict in the checkpoint at ``path`` and its 0-based epoch."""
    if not path.is_file():
        present = [name for name, file in CHECKPOINTS.items() if (path.parent / file).is_file()]
        valid = ", ".join(f"--checkpoint {name}" for name in present) or "none, no checkpoint was written"
        raise RunDirError(f"{path.parent} has no {path.name}; valid: {valid}")
    try:
        state = training.load(path)
    except CheckpointError as error:  # its hint on what remains speaks of --resume: keep only what is wrong
        raise CheckpointError(error.message) from None
    key = WEIGHTS[weights][0]
    if "epoch" not in state or key not in state:
        raise CheckpointError(f"checkpoint {path} has no {key!r} or 'epoch' entry: not a checkpoint written by "
                              f"main.py")
    if state[key] is None:
        raise CheckpointError(f"checkpoint {path} holds no model EMA (the run had train.model_ema off); valid: "
                              f"--weights model")
    model_state = state[key]
    if weights == "ema":  # timm's ModelEmaV3 holds the averaged model as .module
        model_state = {name.removeprefix("module."): value for name, value in model_state.items()}
    return model_state, state["epoch"]


def num_classes(config, model_state: dict, path: Path) -> int:
    """The classifier width, read off the trained head (timm's pretrained config names the head's module)."""
    pretrained = timm.models.get_pretrained_cfg(config.model.name)
    head = pretrained.classifier if pretrained is not None else "head"
    weight = model_state.get(f"{head}.weight")
    if weight is None:
        raise CheckpointError(f"checkpoint {path} has no classifier {head}.weight: written by another model than "
                              f"{config.model.name}?")
    return weight.shape[0]


def build(config, recipe: Recipe, classes: int) -> nn.Module:
    return build_model(config.model.name, recipe, **model_kwargs(config, classes))


def load_into(model: nn.Module, state: dict, path: Path) -> None:
    """load_state_dict, a mismatch reported as a CheckpointError naming ``path``."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(f"{path} does not fit the run's config.yaml ({training.brief(error)})") from None


def evaluate(config, model: nn.Module, classes: int, device: "str | None") -> dict:
    """engine.evaluate over the run's validation set, with its batch size and autocast."""
    data = build_datasets(config.data, config.aug, config.model.img_size, config.model.in_chans)
    if data.num_classes != classes:
        raise ConfigError(f"the dataset has {data.num_classes} classes, the exported head {classes}")
    loaders = build_loaders(data, config.data, 1, config.train.seed, 0, 1)
    ctx = training.init_distributed(device or config.train.device)
    model.to(ctx.device)
    return engine.evaluate(model, loaders.val, ctx, AMP_DTYPES[config.train.amp], classes)


def export(args: argparse.Namespace) -> dict:
    """Write the export of the run ``args`` name; returns the sizes (and top-1s) that ``report`` prints."""
    config = read_run_config(args.run_dir, args.data_path)
    info = run_record(args.run_dir)
    recipe = config.method.resolved
    recipe = recipe.replace(name=info.get("recipe", recipe.name))
    check_exportable(recipe)
    path = args.run_dir / CHECKPOINTS[args.checkpoint]
    model_state, epoch = checkpoint_weights(path, args.weights)
    classes = num_classes(config, model_state, path)
    model = build(config, recipe, classes)
    load_into(model, model_state, path)
    output = args.output or args.run_dir / f"mxfp4-{args.checkpoint}-{args.weights}.safetensors"
    logged = logged_top1(args.run_dir, epoch, args.weights)
    metadata = {"recipe": recipe.name, "recipe_config": json.dumps(recipe.to_dict()),
                "run_config": json.dumps(config_to_dict(config)), "source_commit": info.get("commit", "unknown"),
                "export_commit": training.source_commit(), "checkpoint": path.name, "epoch": str(epoch),
                "weights": args.weights, "amp": config.train.amp,
                "logged_top1": "unknown" if logged is None else repr(logged)}
    save_mxfp4(output, model, AMP_DTYPES[config.train.amp], args.rest, metadata)
    state, _ = load_mxfp4(output)
    result = {"output": output, "file_bytes": output.stat().st_size, "header_bytes": header_nbytes(output),
              "bf16_bytes": state_nbytes(state, torch.bfloat16), "epoch": epoch, "logged_top1": logged}
    if args.evaluate:
        packed = build(config, eval_recipe(recipe), classes)
        load_into(packed, state, output)
        result["packed_top1"] = evaluate(config, packed, classes, args.device)["acc1"]
    return result


def report(result: dict, weights: str) -> str:
    """What the command prints: the file, its size against bf16, the top-1s."""
    total, header, bf16 = result["file_bytes"], result["header_bytes"], result["bf16_bytes"]
    lines = [f"wrote {result['output']}",
             f"size: {total} bytes ({total / MIB:.3f} MiB; tensors {total - header}, header and metadata {header}); "
             f"the same weights in bf16: {bf16} bytes ({bf16 / MIB:.3f} MiB); file / bf16 {total / bf16:.3f}x, "
             f"tensors / bf16 {(total - header) / bf16:.3f}x"]
    if "packed_top1" in result:
        logged = result["logged_top1"]
        line = f"top-1 ({weights} weights, after epoch {result['epoch'] + 1}): packed file {result['packed_top1']:.2f}"
        if logged is None:
            line += ", run log: not logged"
        else:
            same = "same" if result["packed_top1"] == logged else f"differs by {result['packed_top1'] - logged:+.2f}"
            line += f", run log {logged:.2f} ({same})"
        lines.append(line)
    return "\n".join(lines)


def main(argv: "list[str] | None" = None) -> int:
    """Exit status 0 when exported, 2 for a user error, reported as one ``error:`` line."""
    args = parse_args(argv)
    try:
        result = export(args)
    except (*USER_ERRORS, ExportError, RunDirError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(report(result, args.weights))
    return 0


if __name__ == "__main__":
    sys.exit(main())
