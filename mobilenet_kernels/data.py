"""Datasets and loaders for the ``train`` command: a synthetic task and ImageFolder directories.

Every dataset here is a map-style ``(image, label)`` dataset, split into a training and a
validation part; :func:`train_loader` shards the first over the processes of a distributed run
and :func:`val_loader` the second.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

__all__ = ["SyntheticImages", "synthetic_splits", "image_folder_splits", "train_loader", "val_loader"]

# torchvision's ImageNet normalisation (its MobileNet weights expect it).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SYNTHETIC_SAMPLES = 5000


class SyntheticImages(Dataset):
    """A deterministic, learnable image classification task.

    Image ``i`` is its class's template plus Gaussian noise of std ``noise``, label
    ``i % num_classes``. The templates are fixed random images (coarse 4x4 noise upsampled, so the
    classes differ in large smooth patterns a small conv net picks up in a few dozen steps at any
    resolution). Templates and noise are functions of ``seed`` and the index alone: the same on
    every process and data-loader worker, with no state to carry between epochs. ``first`` offsets
    the indices, so disjoint index ranges give disjoint (training, validation) images.
    """

    def __init__(
        self, num_samples: int, num_classes: int, size: int, *, seed: int = 0, noise: float = 1.0, first: int = 0
    ) -> None:
        self.num_samples, self.num_classes, self.size = num_samples, num_classes, size
        self.seed, self.noise, self.first = seed, noise, first
        generator = torch.Generator().manual_seed(seed)
        coarse = torch.randn(num_classes, 3, 4, 4, generator=generator)
        self.templates = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        self.classes = [f"class_{c}" for c in range(num_classes)]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        index += self.first
        label = index % self.num_classes
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        noise = torch.randn(3, self.size, self.size, generator=generator)
        return self.templates[label] + self.noise * noise, label


def synthetic_splits(num_classes: int, size: int, val_split: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, val) halves of a SYNTHETIC_SAMPLES-image SyntheticImages task."""
    n_val = round(SYNTHETIC_SAMPLES * val_split)
    n_train = SYNTHETIC_SAMPLES - n_val
    return (
        SyntheticImages(n_train, num_classes, size, seed=seed),
        SyntheticImages(n_val, num_classes, size, seed=seed, first=n_train),
    )


def image_folder_splits(root: str, size: int, val_split: float, seed: int) -> tuple[Dataset, Dataset, list[str]]:
    """(train, val, class names) from an ImageFolder directory (``root/<class>/<image>``).

    With ``root/train`` and ``root/val`` (the ImageNet layout) those are the two splits; otherwise
    a seeded random ``val_split`` fraction of ``root`` is held out. Training images get
    torchvision's ImageNet augmentation (RandomResizedCrop, horizontal flip), validation images a
    resize to ``size * 256 / 224`` and a centre crop. Raises FileNotFoundError (torchvision's
    one-line message) for a directory that is not an ImageFolder, ImportError without torchvision.
    """
    from torchvision import datasets, transforms

    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize,
    ])
    val_tf = transforms.Compose([
        transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size), transforms.ToTensor(), normalize,
    ])
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    if os.path.isdir(train_dir) and os.path.isdir(val_dir):
        train, val = datasets.ImageFolder(train_dir, train_tf), datasets.ImageFolder(val_dir, val_tf)
        if train.classes != val.classes:
            raise FileNotFoundError(f"{train_dir} and {val_dir} hold different class folders")
        return train, val, train.classes
    train = datasets.ImageFolder(root, train_tf)
    val = copy.copy(train)  # one directory scan; only the transform differs
    val.transform = val_tf
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = round(len(train) * val_split)
    return Subset(train, order[n_val:]), Subset(val, order[:n_val]), train.classes


def train_loader(
    dataset: Dataset, batch: int, *, rank: int, world_size: int, seed: int, workers: int, pin_memory: bool
) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled batches of ``batch`` images per process, full batches only (BatchNorm needs more
    than one value per channel). The order depends only on ``seed`` and the epoch passed to the
    returned sampler's ``set_epoch``, so a resumed run sees the same batches as an uninterrupted one.
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(dataset, batch, sampler=sampler, num_workers=workers, pin_memory=pin_memory, drop_last=True,
                        persistent_workers=workers > 0)
    return loader, sampler


def val_loader(
    dataset: Dataset, batch: int, *, rank: int, world_size: int, workers: int, pin_memory: bool
) -> DataLoader:
    """Every ``world_size``-th image from ``rank`` on, in order: the shards cover the split exactly
    once (DistributedSampler would pad with repeats and bias the accuracy)."""
    shard = Subset(dataset, range(rank, len(dataset), world_size))
    return DataLoader(shard, batch, shuffle=False, num_workers=workers, pin_memory=pin_memory)
