"""Datasets by name, the in-memory batch pipeline and augmentations (see docs/ARCHITECTURE.md).

Example:
    >>> from resnetlab.data import load_dataset, build_loader
    >>> s = load_dataset("digits", val_fraction=0.1)
    >>> dl = build_loader(s.train, batch_size=64, augment=["crop:padding=1"], mean=s.mean, std=s.std)
    >>> x, y, idx = next(dl.iter_epoch(0))
    >>> x.shape
    torch.Size([64, 1, 8, 8])
"""

from resnetlab.data.augment import AUGMENT_NAMES, AugmentItem, BatchAugment, build_augment, output_shape, parse_augment
from resnetlab.data.datasets import (
    DATASET_NAMES,
    DatasetSplits,
    ImageSet,
    data_root,
    load_dataset,
    stratified_split,
)
from resnetlab.data.images import load_images, preprocess, read_image
from resnetlab.data.loader import BatchLoader, StreamLoader, build_loader, derive_seed

__all__ = [
    "AUGMENT_NAMES",
    "DATASET_NAMES",
    "AugmentItem",
    "BatchAugment",
    "BatchLoader",
    "DatasetSplits",
    "ImageSet",
    "StreamLoader",
    "build_augment",
    "build_loader",
    "data_root",
    "derive_seed",
    "load_dataset",
    "load_images",
    "output_shape",
    "parse_augment",
    "preprocess",
    "read_image",
    "stratified_split",
]
