"""Data layer: dataset sources, seeded splits, batch augmentation on the device, a resumable loader.

See docs/data.md. Importing this package loads torch and numpy only (sklearn lazily, for digits).
"""

from rankscope.data.augment import AugmentConfig, AugmentParams, augment_batch, normalize
from rankscope.data.cifar import (
    CIFAR10_MD5,
    CIFAR10_URL,
    download_file,
    locate_cifar10,
    resolve_data_dir,
)
from rankscope.data.loader import BatchCycler, TensorLoader, cycle_batches, derive_seed
from rankscope.data.sources import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    SOURCES,
    Arrays,
    channel_stats,
    load_arrays,
    load_cifar10,
    load_digits,
    load_npz,
)
from rankscope.data.splits import class_balanced_subset, split_train_val

__all__ = [
    "Arrays",
    "AugmentConfig",
    "AugmentParams",
    "BatchCycler",
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "SOURCES",
    "TensorLoader",
    "augment_batch",
    "channel_stats",
    "class_balanced_subset",
    "cycle_batches",
    "derive_seed",
    "download_file",
    "load_arrays",
    "load_cifar10",
    "load_digits",
    "load_npz",
    "locate_cifar10",
    "normalize",
    "resolve_data_dir",
    "split_train_val",
]
