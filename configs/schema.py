"""The run configuration as typed dataclasses: one section per concern, every key with its default.

A run is fully defined by these values; YAML files and command-line overrides only fill them in (configs.loader).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from quantization import Recipe, get_recipe

# The fixed choices, checked when a config is loaded (configs.loader.validate), before anything is written.
AMP_MODES = ("bf16", "fp16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("eager", "inductor", "aot_eager")  # train.compile: eager (none), or a torch.compile backend
SCHED_INTERVALS = ("epoch", "step")
OPTIMIZER_NAMES = ("adamw",)  # training.optim.OPTIMIZERS builds each
DATASET_NAMES = ("imagenet", "fashion_mnist", "cifar10", "cifar100")  # datasets.build_datasets reads each
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "random")  # timm's transform names
ERASE_MODES = ("const", "rand", "pixel")  # timm RandomErasing modes
MIXUP_MODES = ("batch", "pair", "elem")  # timm Mixup modes


@dataclass
class ModelConfig:
    """Which network to build (any timm ViT/Swin-like model name) and its shape."""

    name: str = "deit_tiny_patch16_224"
    img_size: int = 224
    patch_size: Optional[int] = None  # None: the timm model's own
    in_chans: int = 3
    drop_path: float = 0.1
    timm_kwargs: dict = field(default_factory=dict)  # more timm.create_model arguments (depth, embed_dim, ...)


@dataclass
class MethodConfig:
    """The training method: a quantization recipe by name (quantization.RECIPES) or as a mapping.

    A mapping may name a ``base`` recipe and override some of its fields, e.g. ``{base: tetrajet, q2: null}``.
    """

    name: Optional[str] = None  # label for logs and tables; None: the recipe's name
    recipe: Union[str, dict] = "tetrajet"

    @functools.cached_property
    def resolved(self) -> Recipe:
        """The recipe this method names or spells out (``base`` + overrides, or all fields), built once; a bad
        name or field raises ValueError (the loader reports it as a ConfigError at load time)."""
        if isinstance(self.recipe, str):
            return get_recipe(self.recipe)
        fields = dict(self.recipe)
        base = fields.pop("base", None)
        data = get_recipe(base).to_dict() if base is not None else {}
        data["name"] = self.name or (f"{base}_custom" if base else "custom")
        data.update(fields)
        return Recipe.from_dict(data)


@dataclass
class DataConfig:
    """Dataset, where it lives, and how it is batched (``batch_size`` is per process)."""

    dataset: str = "imagenet"
    path: Optional[str] = None
    download: bool = False  # torchvision download as a last resort (fashion_mnist, cifar10, cifar100)
    batch_size: int = 256
    num_workers: int = 8
    pin_memory: bool = True
    train_subset: Optional[int] = None  # use this many training images (a fixed random subset)
    val_subset: Optional[int] = None
    crop_pct: float = 0.875  # evaluation: resize to img_size / crop_pct, then center crop


@dataclass
class AugConfig:
    """DeiT data augmentation and label regularisation."""

    no_aug: bool = False  # training transform = evaluation transform (debugging, exactness tests)
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.3
    interpolation: str = "bicubic"
    scale: list = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range
    hflip: float = 0.5
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.1
    repeated_aug: int = 3  # repeats per image in the repeated-augmentation sampler; 1 = off


@dataclass
class OptimConfig:
    """Optimizer and cosine learning-rate schedule; ``lr`` is for a global batch of 512 and scales linearly.

    The defaults are DeiT's schedule: one value per epoch, the warm-up inside the cosine's span, warm-up and minimum
    rates as given. Swin's: ``sched_interval: step``, ``warmup_prefix: true``, ``scale_warmup_min_lr: true``.
    """

    name: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    clip_grad: Optional[float] = None
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    sched_interval: str = "epoch"  # "epoch": the rate changes once per epoch; "step": before every iteration
    warmup_prefix: bool = False  # true: warm-up first, then a cosine over the remaining epochs
    scale_warmup_min_lr: bool = False  # true: warmup_lr and min_lr scale with the global batch like lr


@dataclass
class TrainConfig:
    """Epochs, numerics, seeding, model EMA and logging cadence."""

    epochs: int = 90
    amp: str = "bf16"
    device: str = "auto"
    seed: int = 0
    model_ema: bool = True
    model_ema_decay: float = 0.99996
    log_interval: int = 50  # steps between step records in the logs
    # torch.compile(fullgraph=True) of the training model with this backend (inductor: the fast one; aot_eager:
    # traced but run op by op, to check that tracing changes nothing); "eager" does not compile.
    compile: str = "eager"
    # Replay the training step as CUDA graphs (training/cuda_graph.py, docs/cuda-graphs.md): for host-bound small
    # models; CUDA, one process, bf16/fp32, train.compile=eager, a capture-safe method; AdamW becomes capturable.
    cuda_graph: bool = False
    # Oscillation metrics (quantization.OscillationMonitor; Table 3, Figs. 2, 3, 5, 6): every osc_interval steps
    # (0 = off) follow osc_window steps; r(Y) of module osc_block on the first osc_probe validation images.
    osc_interval: int = 0
    osc_window: int = 30
    osc_block: str = "blocks.9"
    osc_probe: int = 32


@dataclass
class RunConfig:
    """Everything that defines a run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "output/run"


class ConfigError(ValueError):
    """A bad or unknown configuration value: a user error, reported in one line (main.py exits with status 2)."""


def choices_error(what: str, value: Any, valid: "tuple[str, ...] | list[str]") -> ConfigError:
    """The error for a value outside a fixed set of choices, naming both."""
    return ConfigError(f"unknown {what} {value!r}; valid choices: {', '.join(valid)}")
