"""The partition report files and numbers, and the atomic write helpers they use."""

from __future__ import annotations

import csv
import json
import math
import os

import datasets
import numpy as np
import pytest

from fedsub.config import PartitionConfig
from fedsub.core.io import atomic_write_bytes, atomic_write_text
from fedsub.data import partition, save_partition_report
from fedsub.data.report import effective_classes, heterogeneity_summary


def test_effective_classes_exact():
    hist = np.array([[2, 2, 0], [4, 0, 0], [0, 0, 0], [1, 1, 2]])
    expected_last = math.exp(-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)))  # 2^1.5
    np.testing.assert_allclose(effective_classes(hist), [2.0, 1.0, 0.0, expected_last])
    summary = heterogeneity_summary(hist)
    assert summary["sizes"] == [4, 4, 0, 4] and summary["classes_present"] == [2, 1, 0, 3]
    assert summary["mean_effective_classes"] == pytest.approx((3.0 + expected_last) / 4, abs=1e-4)
    pooled = np.array([7, 3, 2]) / 12  # column sums of hist
    assert summary["global_effective_classes"] == pytest.approx(math.exp(-np.sum(pooled * np.log(pooled))), abs=1e-4)


def test_report_files(tmp_path):
    table = datasets.Dataset.from_dict({"label": [0, 0, 1, 1, 2, 2], "id": [f"x{i}" for i in range(6)]})
    parts = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    cfg = PartitionConfig(scheme="iid")
    summary = save_partition_report(tmp_path, parts, table, ["cat", "dog", "eel"], cfg=cfg, seed=4)

    manifest = json.loads((tmp_path / "partition.json").read_text())
    assert manifest["clients"] == {"0": ["x0", "x1", "x2"], "1": ["x3", "x4", "x5"]}
    assert manifest["scheme"]["scheme"] == "iid" and manifest["scheme"]["seed"] == 4
    assert manifest["scheme"]["num_clients"] == 2 and manifest["summary"] == summary

    with open(tmp_path / "label_histogram.csv") as handle:
        assert list(csv.reader(handle)) == [
            ["client", "cat", "dog", "eel", "total"],
            ["0", "2", "1", "0", "3"],
            ["1", "0", "1", "2", "3"],
        ]
    png = (tmp_path / "partition_heatmap.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert summary["sizes"] == [3, 3] and summary["num_classes"] == 3
    assert summary["effective_classes"][0] == pytest.approx(
        math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))), abs=1e-4
    )
    assert sorted(os.listdir(tmp_path)) == ["label_histogram.csv", "partition.json", "partition_heatmap.png"]


def test_report_over_a_grouping_column(tmp_path, table):
    parts = partition(table, PartitionConfig(scheme="shards", by="topic", classes_per_client=2), 25, seed=0)
    summary = save_partition_report(tmp_path, parts, table, column="topic")
    header = (tmp_path / "label_histogram.csv").read_text().splitlines()[0].split(",")
    assert header[1:3] == ["topic00", "topic01"] and len(header) == 27
    assert summary["classes_present"] == [2] * 25
    ids = [i for client in json.loads((tmp_path / "partition.json").read_text())["clients"].values() for i in client]
    assert sorted(ids) == sorted(table["id"])  # 25 clients >= 25 topics: every row recorded once


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    atomic_write_bytes(tmp_path / "sub" / "b.bin", b"\x00\x01")
    assert sorted(os.listdir(tmp_path / "sub")) == ["b.bin", "f.txt"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]
