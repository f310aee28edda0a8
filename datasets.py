"""Data: ImageNet-style ImageFolder trees, Fashion-MNIST from its IDX files, CIFAR-10/100 through torchvision;
DeiT transforms, Mixup/CutMix, the repeated-augmentation sampler, per-epoch deterministic loaders and the loaders
of Q-Ramping's calibrations."""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from timm.data import auto_augment
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision import datasets as tv_datasets
from torchvision import transforms as tv_transforms

from configs import DATASET_NAMES, AugConfig, ConfigError, DataConfig, choices_error

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CALIBRATION_STREAM = 0xCA11B  # mixed into the seeds of Q-Ramping's calibration loaders, apart from training's
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
STATS = {  # per-channel mean, std
    "imagenet": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not where the configuration says; the message says what was expected and how to get it."""


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    num_classes: int


class ArrayImageDataset(Dataset):
    """Images held in memory as a uint8 array (N, H, W) with integer labels, served as PIL images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: "tuple[str, ...]", transform=None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.classes, self.transform = images, labels, classes, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode="L")
        return (self.transform(image) if self.transform else image), int(self.labels[index])


class ConvertMode:
    """PIL image to mode 'L' (one channel) or 'RGB' (three); picklable for loader worker processes."""

    def __init__(self, in_chans: int) -> None:
        if in_chans not in (1, 3):
            raise ConfigError(f"images can be fed with 1 or 3 channels, not model.in_chans={in_chans}")
        self.mode = "L" if in_chans == 1 else "RGB"

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == self.mode else image.convert(self.mode)


def read_idx(path: "str | Path") -> np.ndarray:
    """An IDX file (optionally gzipped) of unsigned bytes as a numpy array of its declared shape."""
    path = Path(path)
    with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as handle:
        data = handle.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {array.size} values (truncated download?)")
    return array.reshape(shape)


def _idx_file(directory: Path, stem: str) -> "Path | None":
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def find_fashion_mnist(path: "str | None", download: bool) -> Path:
    """The directory holding the four Fashion-MNIST IDX files: ``path`` if given, else the Debian package's
    directory, else (with ``download``) torchvision's download into ``data/``."""
    stems = FASHION_MNIST_FILES[True] + FASHION_MNIST_FILES[False]
    if path is not None:
        candidates = [Path(path), Path(path) / "FashionMNIST" / "raw"]
    else:
        candidates = [FASHION_MNIST_DIR, Path("data") / "FashionMNIST" / "raw"]
    for directory in candidates:
        if all(_idx_file(directory, stem) for stem in stems):
            return directory
    if download:
        root = Path(path or "data")
        for train in (True, False):
            tv_datasets.FashionMNIST(str(root), train=train, download=True)
        return root / "FashionMNIST" / "raw"
    where = " or ".join(str(c) for c in candidates)
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found: expected the IDX files {', '.join(s + '[.gz]' for s in stems)} in {where}. "
        f"Get them with `apt-get install dataset-fashion-mnist` (installs into {FASHION_MNIST_DIR}), pass "
        f"--data-path DIR to a directory holding them, or set data.download=true to fetch them with torchvision.")


def load_fashion_mnist(directory: Path, train: bool) -> ArrayImageDataset:
    images_stem, labels_stem = FASHION_MNIST_FILES[train]
    images, labels = read_idx(_idx_file(directory, images_stem)), read_idx(_idx_file(directory, labels_stem))
    return ArrayImageDataset(images, labels, FASHION_MNIST_CLASSES)


def check_imagefolder(path: "str | None") -> Path:
    """The root of an ImageNet-style tree; anything else is an error explaining the expected layout."""
    how = ("expected an ImageFolder tree PATH/train/<class>/<image> and PATH/val/<class>/<image> (ImageNet: the "
           "ILSVRC2012 train and val sets with val sorted into class folders). To try the code path without "
           "ImageNet, build one from Fashion-MNIST: python scripts/prepare_imagefolder.py --out data/fmnist-tree")
    if path is None:
        raise DatasetNotFoundError(f"data.dataset=imagenet needs data.path (--data-path): {how}")
    root = Path(path)
    for split in ("train", "val"):
        split_dir = root / split
        if not split_dir.is_dir() or not any(child.is_dir() for child in split_dir.iterdir()):
            raise DatasetNotFoundError(f"{split_dir} is missing or has no class folders: {how}")
    return root


def _cifar(name: str, path: "str | None", download: bool, train: bool) -> Dataset:
    cls = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
    root = path or "data"
    try:
        return cls(root, train=train, download=download)
    except RuntimeError as error:
        raise DatasetNotFoundError(
            f"{name} not found under {root!r} ({error}): expected torchvision's extracted archive there "
            f"(e.g. {root}/cifar-10-batches-py). Set data.download=true to fetch it, or --data-path to its "
            f"parent directory.") from error


def _subset(dataset: Dataset, size: "int | None") -> Dataset:
    """A fixed random subset of ``size`` items (the same whatever the run's seed), or the whole dataset."""
    if size is None or size >= len(dataset):
        return dataset
    if size < 1:
        raise ValueError(f"subset size must be at least 1, got {size}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    return Subset(dataset, sorted(order[:size].tolist()))


def channel_stats(dataset: str, in_chans: int) -> "tuple[tuple[float, ...], tuple[float, ...]]":
    """Normalisation mean and std of ``dataset`` for ``in_chans`` channels (averaged or repeated to fit)."""
    mean, std = STATS[dataset]
    if len(mean) != in_chans:
        mean, std = (float(np.mean(mean)),) * in_chans, (float(np.mean(std)),) * in_chans
    return tuple(mean), tuple(std)


def _posterize(image: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize op, keeping 0 bits (a black image, what Pillow < 13 gave) rather than raising: RandAugment's
    PosterizeIncreasing reaches 0 bits at magnitude 10, which rand-m9-mstd0.5 draws now and then."""
    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return auto_augment.posterize(image, bits_to_keep)


def _pillow_safe(transform):
    """``transform`` with the posterize op of any RandAugment inside it replaced by ``_posterize``."""
    for step in getattr(transform, "transforms", ()):
        for op in getattr(step, "ops", ()):
            if op.aug_fn is auto_augment.posterize:
                op.aug_fn = _posterize
    return transform


def build_transforms(data: DataConfig, aug: AugConfig, img_size: int, in_chans: int):
    """(train, eval) transforms: timm's DeiT pipeline (RandAugment, random erasing, ...) after a channel fix."""
    mean, std = channel_stats(data.dataset, in_chans)
    eval_tf = create_transform(img_size, is_training=False, interpolation=aug.interpolation, crop_pct=data.crop_pct,
                               mean=mean, std=std)
    train_tf = eval_tf if aug.no_aug else _pillow_safe(create_transform(
        img_size, is_training=True, auto_augment=aug.auto_augment, color_jitter=aug.color_jitter,
        interpolation=aug.interpolation, scale=tuple(aug.scale), hflip=aug.hflip, re_prob=aug.reprob,
        re_mode=aug.remode, re_count=aug.recount, mean=mean, std=std))
    convert = ConvertMode(in_chans)
    return tv_transforms.Compose([convert, train_tf]), tv_transforms.Compose([convert, eval_tf])


def build_datasets(data: DataConfig, aug: AugConfig, img_size: int, in_chans: int) -> DataBundle:
    """Train and validation sets of ``data.dataset`` with their transforms, subsets applied."""
    if data.dataset not in DATASET_NAMES:
        raise choices_error("data.dataset", data.dataset, DATASET_NAMES)
    train_tf, eval_tf = build_transforms(data, aug, img_size, in_chans)
    if data.dataset == "imagenet":
        root = check_imagefolder(data.path)
        train = tv_datasets.ImageFolder(str(root / "train"), transform=train_tf)
        val = tv_datasets.ImageFolder(str(root / "val"), transform=eval_tf)
        if train.classes != val.classes:
            raise DatasetNotFoundError(f"{root}: train/ has {len(train.classes)} classes, val/ "
                                       f"{len(val.classes)}; both need the same class folders")
        num_classes = len(train.classes)
    elif data.dataset == "fashion_mnist":
        directory = find_fashion_mnist(data.path, data.download)
        train, val = load_fashion_mnist(directory, True), load_fashion_mnist(directory, False)
        train.transform, val.transform = train_tf, eval_tf
        num_classes = len(FASHION_MNIST_CLASSES)
    else:
        train = _cifar(data.dataset, data.path, data.download, True)
        val = _cifar(data.dataset, data.path, data.download, False)
        train.transform, val.transform = train_tf, eval_tf
        num_classes = len(train.classes)
    return DataBundle(_subset(train, data.train_subset), _subset(val, data.val_subset), num_classes)


def build_mixup(aug: AugConfig, num_classes: int) -> "Mixup | None":
    """timm's Mixup/CutMix (with label smoothing folded into the soft targets), or None when both are off."""
    if (aug.mixup <= 0 and aug.cutmix <= 0) or aug.mixup_prob <= 0:
        return None
    return Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, prob=aug.mixup_prob,
                 switch_prob=aug.mixup_switch_prob, mode=aug.mixup_mode, label_smoothing=aug.smoothing,
                 num_classes=num_classes)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (run seed, epoch, rank, ...), well spread for nearby inputs."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


class GlobalBatchSampler(Sampler):
    """Shuffled (and with ``repeats`` > 1, repeated-augmentation) order for one epoch, cut into global batches.

    Each epoch draws a permutation from (seed, epoch) alone, repeats every index ``repeats`` times in a row and
    keeps the first len(dataset) of them (DeiT's repeated augmentation: an epoch sees len/repeats images, each
    ``repeats`` times), then drops the tail that does not fill a global batch. Rank r reads the r-th slice of each
    global batch, so the sequence of global batches does not depend on how many processes share it.
    """

    def __init__(self, num_items: int, local_batch: int, rank: int = 0, world_size: int = 1, repeats: int = 1,
                 seed: int = 0) -> None:
        self.num_items, self.local_batch, self.rank, self.world_size = num_items, local_batch, rank, world_size
        self.repeats, self.seed, self.epoch = repeats, seed, 0
        self.num_batches = num_items // (local_batch * world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.local_batch

    def __iter__(self):
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_items, generator=generator)
        order = order.repeat_interleave(self.repeats)[: self.num_items]
        batches = order[: self.num_batches * self.local_batch * self.world_size]
        mine = batches.view(self.num_batches, self.world_size, self.local_batch)[:, self.rank]
        return iter(mine.reshape(-1).tolist())


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    seed: int
    rank: int

    def set_epoch(self, epoch: int) -> None:
        """Fix this epoch's sample order and the seeds of its loader workers (so a resumed run repeats them)."""
        self.train.sampler.set_epoch(epoch)
        self.train.generator.manual_seed(mix_seed(self.seed, epoch, self.rank))


def build_loaders(bundle: DataBundle, data: DataConfig, repeats: int, seed: int, rank: int,
                  world_size: int) -> Loaders:
    """Training loader over this rank's slice of every global batch; validation loader over a 1/world shard."""
    sampler = GlobalBatchSampler(len(bundle.train), data.batch_size, rank, world_size, repeats, seed)
    common = dict(num_workers=data.num_workers, pin_memory=data.pin_memory and torch.cuda.is_available())
    train = DataLoader(bundle.train, batch_size=data.batch_size, sampler=sampler, drop_last=True,
                       generator=torch.Generator(), **common)
    val = DataLoader(bundle.val, batch_size=data.batch_size, sampler=range(rank, len(bundle.val), world_size),
                     **common)
    return Loaders(train, val, seed, rank)


class CalibrationSampler(Sampler):
    """This rank's slice of ``num_batches`` global batches for the Q-Ramping calibration at global step ``step``.

    The order is GlobalBatchSampler's (same repeats, same cut into global batches) over a seed stream of its own,
    mix_seed(seed, CALIBRATION_STREAM, step): it never coincides with a training epoch's order, does not depend on
    the number of processes, and a resumed run draws it again. When one pass over the set holds fewer than
    ``num_batches`` batches, the stream's next shuffles continue it.
    """

    def __init__(self, num_items: int, local_batch: int, num_batches: int, step: int, rank: int = 0,
                 world_size: int = 1, repeats: int = 1, seed: int = 0) -> None:
        self.passes = GlobalBatchSampler(num_items, local_batch, rank, world_size, repeats,
                                         mix_seed(seed, CALIBRATION_STREAM, step))
        if self.passes.num_batches < 1:
            raise ValueError(f"{num_items} items do not fill one global batch of {local_batch * world_size}")
        self.size = num_batches * local_batch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        indices: list[int] = []
        shuffle = 0
        while len(indices) < self.size:
            self.passes.set_epoch(shuffle)
            indices += list(self.passes)
            shuffle += 1
        return iter(indices[: self.size])


def build_calibration_loader(dataset: Dataset, data: DataConfig, repeats: int, seed: int, rank: int,
                             world_size: int, step: int, num_batches: int) -> DataLoader:
    """Loader of ``num_batches`` batches of ``dataset`` for the calibration at global ``step`` (CalibrationSampler);
    its worker seeds come from (seed, CALIBRATION_STREAM, step, rank), not from any global generator."""
    sampler = CalibrationSampler(len(dataset), data.batch_size, num_batches, step, rank, world_size, repeats, seed)
    generator = torch.Generator().manual_seed(mix_seed(seed, CALIBRATION_STREAM, step, rank))
    return DataLoader(dataset, batch_size=data.batch_size, sampler=sampler, drop_last=True, generator=generator,
                      num_workers=data.num_workers, pin_memory=data.pin_memory and torch.cuda.is_available())
