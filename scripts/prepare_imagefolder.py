"""Build an ImageNet-style ImageFolder tree (train/<class>/*.png, val/<class>/*.png) from Fashion-MNIST, so the
ImageNet code path (data.dataset=imagenet) runs for real without ImageNet.

Usage: python scripts/prepare_imagefolder.py --out data/fmnist-tree [--source DIR] [--train-per-class N]
       [--val-per-class N]
Then:  python main.py --config ... --set data.dataset=imagenet --data-path data/fmnist-tree
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from datasets import find_fashion_mnist, load_fashion_mnist


def class_dir_name(index: int, name: str) -> str:
    """A folder name that sorts in label order: 'T-shirt/top' (label 0) -> '0_t-shirt_top'."""
    return f"{index}_{re.sub(r'[^a-z0-9-]+', '_', name.lower())}"


def write_split(images: np.ndarray, labels: np.ndarray, classes: "tuple[str, ...]", out: Path,
                per_class: "int | None") -> int:
    """PNG files of the first ``per_class`` images of each class (all when None); returns how many were written."""
    written = 0
    for label, name in enumerate(classes):
        folder = out / class_dir_name(label, name)
        folder.mkdir(parents=True, exist_ok=True)
        for index in np.flatnonzero(labels == label)[:per_class]:
            Image.fromarray(images[index], mode="L").save(folder / f"{index:05d}.png")
            written += 1
    return written


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="root of the tree to create")
    parser.add_argument("--source", help="directory of the Fashion-MNIST IDX files (default: the Debian package's)")
    parser.add_argument("--train-per-class", type=int, help="images per class in train/ (default: all 6000)")
    parser.add_argument("--val-per-class", type=int, help="images per class in val/ (default: all 1000)")
    args = parser.parse_args(argv)
    directory = find_fashion_mnist(args.source, download=False)
    for split, train, per_class in (("train", True, args.train_per_class), ("val", False, args.val_per_class)):
        data = load_fashion_mnist(directory, train)
        count = write_split(data.images, data.labels, data.classes, args.out / split, per_class)
        print(f"{args.out / split}: {count} images in {len(data.classes)} class folders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
