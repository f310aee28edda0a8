"""datasets.py: IDX reading, dataset errors that explain themselves, transforms, the global-batch sampler."""
import dataclasses
import gzip

import numpy as np
import pytest
from PIL import Image
from timm.data import auto_augment

from configs import load_config
from datasets import (FASHION_MNIST_DIR, CalibrationSampler, DatasetNotFoundError, GlobalBatchSampler,
                      build_datasets, build_transforms, channel_stats, find_fashion_mnist, read_idx)

needs_fmnist = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                                  reason="apt-get install dataset-fashion-mnist")


@needs_fmnist
def test_fashion_mnist_from_the_debian_package():
    config = load_config([], ["data.dataset=fashion_mnist", "data.val_subset=50", "model.img_size=28",
                              "model.in_chans=1", "data.crop_pct=1.0"])
    bundle = build_datasets(config.data, config.aug, 28, 1)
    assert (len(bundle.train), len(bundle.val), bundle.num_classes) == (60000, 50, 10)
    image, label = bundle.train[0]
    assert image.shape == (1, 28, 28) and 0 <= label < 10
    raw = read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz")
    assert raw.shape == (60000,) and set(np.unique(raw)) == set(range(10))


def test_read_idx_roundtrip_and_corrupt_files(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in data.shape)
    (tmp_path / "ok.gz").write_bytes(gzip.compress(header + data.tobytes()))
    assert np.array_equal(read_idx(tmp_path / "ok.gz"), data)
    (tmp_path / "short").write_bytes(header + data.tobytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "text").write_text("not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "text")


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"train-images-idx3-ubyte\[\.gz\].*apt-get install "
                                                   r"dataset-fashion-mnist.*--data-path.*data.download=true"):
        find_fashion_mnist(str(tmp_path), download=False)


@pytest.mark.parametrize("make,message", [
    (lambda root: None, r"needs data.path \(--data-path\).*PATH/train/<class>/<image>"),
    (lambda root: root, r"train is missing or has no class folders.*prepare_imagefolder.py"),
    (lambda root: (root / "train" / "a").mkdir(parents=True) or root, r"val is missing"),
])
def test_missing_imagefolder_tree_says_what_is_expected(tmp_path, make, message):
    path = make(tmp_path)
    config = load_config([], ["data.dataset=imagenet"] + ([f"data.path={path}"] if path else []))
    with pytest.raises(DatasetNotFoundError, match=message):
        build_datasets(config.data, config.aug, 224, 3)


def test_unknown_dataset_lists_the_choices():
    message = "unknown data.dataset 'mnist'; valid choices: imagenet, fashion_mnist"
    with pytest.raises(ValueError, match=message):  # at load time, before a run writes anything
        load_config([], ["data.dataset=mnist"])
    config = load_config([])
    with pytest.raises(ValueError, match=message):  # and for a DataConfig built in code
        build_datasets(dataclasses.replace(config.data, dataset="mnist"), config.aug, 28, 1)


def test_channel_stats_fit_the_channel_count():
    assert channel_stats("fashion_mnist", 3) == ((0.2860,) * 3, (0.3530,) * 3)
    mean, std = channel_stats("imagenet", 1)
    assert len(mean) == len(std) == 1 and 0.4 < mean[0] < 0.5


def test_randaugment_posterize_to_zero_bits_does_not_crash():
    config = load_config([], ["data.dataset=fashion_mnist"])  # DeiT defaults: rand-m9-mstd0.5-inc1
    train_tf, _ = build_transforms(config.data, config.aug, 28, 1)
    ops = [op for step in train_tf.transforms[1].transforms for op in getattr(step, "ops", ())]
    posterize = [op for op in ops if op.name == "PosterizeIncreasing"]
    assert posterize and all(op.aug_fn is not auto_augment.posterize for op in posterize)
    image = Image.fromarray(np.full((28, 28), 200, dtype=np.uint8), mode="L")
    assert np.array(posterize[0].aug_fn(image, 0)).max() == 0
    assert np.array_equal(np.array(posterize[0].aug_fn(image, 4)), np.array(auto_augment.posterize(image, 4)))


@pytest.mark.parametrize("repeats", [1, 3])
def test_global_batches_do_not_depend_on_the_number_of_processes(repeats):
    single = list(GlobalBatchSampler(103, 8, repeats=repeats, seed=5))
    ranks = [list(GlobalBatchSampler(103, 2, rank=r, world_size=4, repeats=repeats, seed=5)) for r in range(4)]
    assert len(single) == 96 and all(len(r) == 24 for r in ranks)
    for step in range(12):
        assert single[8 * step: 8 * step + 8] == sum((r[2 * step: 2 * step + 2] for r in ranks), [])


def test_sampler_epochs_and_repeats():
    sampler = GlobalBatchSampler(90, 10, repeats=3, seed=0)
    first = list(sampler)
    assert all(first[i] == first[i + 1] == first[i + 2] for i in range(0, 90, 3))  # each image 3 times in a row
    assert list(sampler) == first  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(GlobalBatchSampler(90, 10, repeats=3, seed=1)) != first
    assert sorted(GlobalBatchSampler(90, 10, seed=0)) == list(range(90))  # no repeats: a permutation
    assert len(GlobalBatchSampler(5, 10)) == 0


def _batches(indices, size):
    return [tuple(indices[i: i + size]) for i in range(0, len(indices), size)]


def test_calibration_batches_are_fresh_and_apart_from_the_training_order():
    calib = list(CalibrationSampler(96, 8, num_batches=5, step=24, seed=3))
    assert len(calib) == 40 and len(set(_batches(calib, 8))) == 5 and len(set(calib)) == 40
    assert list(CalibrationSampler(96, 8, num_batches=5, step=24, seed=3)) == calib  # resumable: (seed, step) only
    assert list(CalibrationSampler(96, 8, num_batches=5, step=36, seed=3)) != calib
    training = set()
    for epoch in range(4):
        sampler = GlobalBatchSampler(96, 8, seed=3)
        sampler.set_epoch(epoch)
        training |= set(_batches(list(sampler), 8))
    assert not training & set(_batches(calib, 8))


@pytest.mark.parametrize("repeats", [1, 3])
def test_calibration_batches_do_not_depend_on_the_number_of_processes(repeats):
    single = list(CalibrationSampler(103, 8, num_batches=4, step=7, repeats=repeats, seed=5))
    ranks = [list(CalibrationSampler(103, 2, num_batches=4, step=7, rank=r, world_size=4, repeats=repeats, seed=5))
             for r in range(4)]
    for step in range(4):
        assert single[8 * step: 8 * step + 8] == sum((r[2 * step: 2 * step + 2] for r in ranks), [])


def test_calibration_longer_than_a_pass_continues_with_new_shuffles():
    calib = list(CalibrationSampler(20, 8, num_batches=5, step=0))  # 2 batches per pass: 3 passes
    assert len(calib) == 40 and len(set(_batches(calib, 8))) == 5
    assert len(set(calib[:16])) == 16 and len(set(calib[16:32])) == 16
    with pytest.raises(ValueError, match="5 items do not fill one global batch of 8"):
        CalibrationSampler(5, 8, num_batches=1, step=0)
