"""Partition invariants for every scheme, plus the impossible requests."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from fedsub.config import PartitionConfig
from fedsub.data import partition
from fedsub.data.partition import _run_flwr, partition_rows, top_up
from fedsub.errors import ConfigError

SCHEMES = ["iid", "dirichlet", "shards", "quantity"]
N_CLIENTS = 5


def _cfg(scheme: str, **kw) -> PartitionConfig:
    return PartitionConfig(scheme=scheme, **kw)


def _labels(table: datasets.Dataset, column: str = "label") -> np.ndarray:
    return np.asarray(table.with_format("numpy")[:][column])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_parts_are_sorted_int64_disjoint_and_cover(table, scheme):
    parts = partition(table, _cfg(scheme, min_partition_size=5), N_CLIENTS, seed=0)
    assert len(parts) == N_CLIENTS
    for rows in parts:
        assert rows.dtype == np.int64 and np.all(np.diff(rows) > 0)  # sorted, no repeats
        assert len(rows) >= 5
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)  # disjoint
    if scheme != "shards":  # shards with 5 clients < 6 classes may leave a class out (tested below)
        np.testing.assert_array_equal(np.sort(joined), np.arange(len(table)))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_deterministic_by_seed_and_seeds_differ(table, scheme):
    cfg = _cfg(scheme)
    first, again, other = (partition(table, cfg, N_CLIENTS, seed=s) for s in (7, 7, 8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_iid_sizes_differ_by_at_most_one_and_mix_labels(table):
    parts = partition(table, _cfg("iid"), N_CLIENTS, seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    labels = _labels(table)
    assert all(len(np.unique(labels[p])) == len(np.unique(labels)) for p in parts)


def test_dirichlet_small_alpha_is_more_skewed_than_large(table):
    labels = _labels(table)

    def mean_classes(alpha: float) -> float:
        parts = partition(table, _cfg("dirichlet", alpha=alpha, min_partition_size=1), N_CLIENTS, seed=0)
        return float(np.mean([len(np.unique(labels[p])) for p in parts]))

    assert mean_classes(0.05) < mean_classes(100.0) == 6.0


def test_dirichlet_has_no_last_client_bias_on_small_groups():
    """One-row groups (e.g. partitioning by lemma): flwr's floor(cumsum) cut sends all of them to
    the last client; multinomial dealing spreads them."""
    table = datasets.Dataset.from_dict({"label": np.arange(400)})
    parts = partition(table, _cfg("dirichlet", alpha=1.0, min_partition_size=1), 4, seed=0)
    assert max(len(p) for p in parts) < 200


def test_quantity_sizes_vary_but_labels_stay_mixed(table):
    parts = partition(table, _cfg("quantity", alpha=0.3, min_partition_size=10), N_CLIENTS, seed=1)
    sizes = sorted(len(p) for p in parts)
    assert sizes[-1] > 3 * sizes[0]
    labels = _labels(table)
    largest = max(parts, key=len)
    assert len(np.unique(labels[largest])) == 6


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shards_give_each_client_exactly_k_classes(table, k):
    labels = _labels(table)
    parts = partition(table, _cfg("shards", classes_per_client=k), 8, seed=3)
    assert [len(np.unique(labels[p])) for p in parts] == [k] * 8
    # 8 clients >= 6 classes: "first-deterministic" uses every class, so all rows are covered
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(table)))


def test_shards_with_fewer_clients_than_classes_cover_only_drawn_classes(table):
    labels = _labels(table)
    parts = partition(table, _cfg("shards", classes_per_client=1), 3, seed=0)
    drawn = {int(labels[p][0]) for p in parts}
    assert drawn == {0, 1, 2}  # client k's first class is k mod C
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.flatnonzero(np.isin(labels, list(drawn))))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_partition_by_grouping_column(table, scheme):
    topics = _labels(table, "topic")
    cfg = _cfg(scheme, by="topic", classes_per_client=2, min_partition_size=1)
    parts = partition(table, cfg, 10, seed=0)
    assert len(np.unique(np.concatenate(parts))) == sum(len(p) for p in parts)
    if scheme == "shards":
        assert all(len(np.unique(topics[p])) == 2 for p in parts)


def test_min_partition_size_is_met_by_redrawing(table):
    cfg = _cfg("dirichlet", alpha=0.1, min_partition_size=40)
    parts = partition(table, cfg, N_CLIENTS, seed=0)
    assert min(len(p) for p in parts) >= 40
    redrawn = partition(table, _cfg("dirichlet", alpha=0.1, min_partition_size=40, min_size_policy="redraw"), 5, 0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, redrawn))  # auto re-draws first: the same draw


def test_top_up_moves_rows_from_the_largest_clients_to_the_short_ones_exact():
    parts = [np.array([0, 1, 2, 3, 4, 5]), np.array([], dtype=np.int64), np.array([6, 7, 8]), np.array([9])]
    out = top_up(parts, 2, np.random.default_rng(0))
    assert [len(p) for p in out] == [3, 2, 3, 2]  # client 1 took 2 rows, client 3 one: all from client 0
    assert set(out[1]) | set(out[3][1:]) <= set(range(6)) and out[3][0] == 9 and list(out[2]) == [6, 7, 8]
    assert sorted(np.concatenate(out).tolist()) == list(range(10))
    with pytest.raises(ConfigError, match="partition.min_partition_size: 3 x 4 clients exceeds"):
        top_up(parts, 3, np.random.default_rng(0))


def test_dirichlet_where_no_redraw_succeeds_is_topped_up_disjoint_and_covering():
    """The issue's case: 80 clients over 800 rows (4 classes), alpha 0.5, min 2: all 100 re-draws
    fail; auto (the default) then tops up the first draw; so do 2,000 clients over 8,000 rows."""
    for clients, n in ((80, 800), (2000, 8000)):
        table = datasets.Dataset.from_dict({"label": np.arange(n) % 4})
        with pytest.raises(ConfigError, match="or set partition.min_size_policy: top_up"):
            partition(table, _cfg("dirichlet", alpha=0.5, min_size_policy="redraw"), clients, seed=0)
        parts = partition(table, _cfg("dirichlet", alpha=0.5), clients, seed=0)
        rows = np.concatenate(parts)
        assert min(len(p) for p in parts) >= 2 and len(rows) == n and len(np.unique(rows)) == n
        topped = partition(table, _cfg("dirichlet", alpha=0.5, min_size_policy="top_up"), clients, seed=0)
        assert all(np.array_equal(a, b) for a, b in zip(parts, topped))
    skew = np.mean([len(np.unique(np.arange(n)[p] % 4)) for p in parts])
    assert skew < 2.5  # label skew survives: most clients see 1-2 of the 4 classes


@pytest.mark.filterwarnings("ignore:Classes")
def test_flwr_private_assignment_matches_its_public_api(table):
    """`_run_flwr` reads PathologicalPartitioner's `_partition_id_to_indices` (flwr-datasets
    0.6.1 internals) instead of `load_partition`; guard that contract against upgrades."""
    from flwr_datasets.partitioner import PathologicalPartitioner

    codes = _labels(table)
    make = lambda: PathologicalPartitioner(  # noqa: E731
        num_partitions=4, partition_by="key", num_classes_per_partition=2, shuffle=False, seed=5
    )
    fast = _run_flwr(make(), codes)
    public = make()
    public.dataset = datasets.Dataset.from_dict({"key": codes, "row": np.arange(len(codes))})
    for k in range(4):
        np.testing.assert_array_equal(fast[k], partition_rows(public, k))


@pytest.mark.parametrize(
    ("cfg", "clients", "field"),
    [
        (_cfg("iid"), 501, "federation.num_clients"),
        (_cfg("dirichlet", min_partition_size=101), N_CLIENTS, "partition.min_partition_size"),
        (_cfg("shards", classes_per_client=7), N_CLIENTS, "partition.classes_per_client"),
        (_cfg("dirichlet", alpha=0.01, min_partition_size=95, min_size_policy="redraw"), N_CLIENTS, "partition.alpha"),
        (_cfg("quantity", alpha=0.01, min_partition_size=95, min_size_policy="redraw"), N_CLIENTS, "partition.alpha"),
        (_cfg("iid", by="nope"), N_CLIENTS, "partition.by"),
    ],
)
def test_impossible_requests_name_the_field(table, cfg, clients, field):
    with pytest.raises(ConfigError) as err:
        partition(table, cfg, clients, seed=0)
    message = str(err.value)
    assert message.startswith(f"{field}:") and "\n" not in message


def test_shards_class_needed_by_more_clients_than_it_has_rows():
    table = datasets.Dataset.from_dict({"label": [0] * 50 + [1] * 2})
    with pytest.raises(ConfigError, match=r"^partition.classes_per_client: Label: 1 is needed"):
        partition(table, _cfg("shards", classes_per_client=2, min_partition_size=0), 4, seed=0)


def test_missing_column_lists_the_columns(table):
    with pytest.raises(ConfigError, match=r"columns are: text, label, id, topic"):
        partition(table, _cfg("iid"), 2, seed=0, column="category")
