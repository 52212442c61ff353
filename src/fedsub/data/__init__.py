"""Data: offline builtin datasets, HF / local-file loading, non-IID partitioning, partition reports."""

from fedsub.data.partition import partition
from fedsub.data.report import save_partition_report
from fedsub.data.splits import Splits, load_splits

__all__ = ["Splits", "load_splits", "partition", "save_partition_report"]
