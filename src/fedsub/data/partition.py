"""Split a training set over clients: iid, Dirichlet label skew, pathological shards, quantity skew.

iid and shards run flwr-datasets' IidPartitioner and PathologicalPartitioner (McMahan et al.
2017) on a small (group code, row) table; Dirichlet label skew (Hsu et al. 2019) and quantity
skew (client sizes from Dir(alpha), labels iid; Li et al. 2022, NIID-Bench) are written here,
each with the reason in its docstring. Any column can stand in for the label (`cfg.by`),
e.g. a category or topic column for unlabelled instruction data.
"""

from __future__ import annotations

import heapq
import warnings
from functools import partial
from typing import TYPE_CHECKING, Callable

import datasets
import numpy as np

from fedsub.config import PartitionConfig
from fedsub.core.seeding import derive_rng, derive_seed
from fedsub.errors import ConfigError

if TYPE_CHECKING:  # flwr_datasets is imported where used: it adds ~3 s to `import fedsub.data`
    from flwr_datasets.partitioner import Partitioner

_KEY, _ROW = "key", "row"  # columns of the table handed to flwr partitioners
# Re-draws for min_partition_size before giving up (each draw is milliseconds).
DIRICHLET_TRIES = 100
QUANTITY_TRIES = 1000  # a rejected draw is one Dirichlet sample of num_clients values
SHARDS_TRIES = 10
TOP_UP = 0x70F0  # the seed stream of top_up's random choices

Parts = list[np.ndarray]


def partition(
    dataset: datasets.Dataset, cfg: PartitionConfig, num_clients: int, seed: int, column: str = "label"
) -> Parts:
    """Client k's rows of `dataset` as a sorted int64 array, for k in 0..num_clients-1.

    Deterministic in `seed`; clients are disjoint. iid, dirichlet and quantity cover every row.
    shards covers every row of the classes some client drew; its "first-deterministic" assignment
    (client k's first class is k mod C) makes that all rows whenever num_clients >= C.
    Every client gets at least `cfg.min_partition_size` rows: re-drawn, or (dirichlet and quantity,
    `cfg.min_size_policy`) topped up from the largest clients (`top_up`).
    """
    key = cfg.by or column
    codes = group_codes(dataset, key, "partition.by" if cfg.by else "column")
    _check_request(cfg, num_clients, codes)
    parts = SCHEMES[cfg.scheme](codes, cfg, num_clients, seed)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def group_codes(dataset: datasets.Dataset, column: str, field: str = "column") -> np.ndarray:
    """The column as int codes 0..G-1 in sorted-value order (cheap comparisons for any type)."""
    if column not in dataset.column_names:
        raise ConfigError(
            f"{field}: column {column!r} not in the dataset; columns are: {', '.join(dataset.column_names)}"
        )
    data = dataset.select_columns([column]).with_format("arrow")[:].column(0)
    if data.null_count:
        raise ConfigError(f"{field}: column {column!r} has {data.null_count} missing values; fill or drop them")
    values = data.to_numpy(zero_copy_only=False)
    return np.unique(values, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _check_request(cfg: PartitionConfig, num_clients: int, codes: np.ndarray) -> None:
    """Reject what no draw can satisfy, naming the field to change."""
    n, groups = len(codes), len(np.unique(codes))
    if num_clients > n:
        raise ConfigError(f"federation.num_clients: {num_clients} clients but only {n} training examples; lower it")
    if cfg.min_partition_size * num_clients > n:
        raise ConfigError(
            f"partition.min_partition_size: {cfg.min_partition_size} x {num_clients} clients exceeds the "
            f"{n} training examples; lower it"
        )
    if cfg.scheme == "shards" and cfg.classes_per_client > groups:
        raise ConfigError(
            f"partition.classes_per_client: {cfg.classes_per_client} but the data has {groups} classes; lower it"
        )


# ---------------------------------------------------------------- schemes


def _iid(codes: np.ndarray, cfg: PartitionConfig, num_clients: int, seed: int) -> Parts:
    """A seeded permutation cut into near-equal contiguous shards (sizes differ by at most 1).
    IidPartitioner itself does not shuffle, so it runs on the permuted codes."""
    from flwr_datasets.partitioner import IidPartitioner  # late: start-up, flwr_datasets takes ~2.4 s to import here

    perm = derive_rng(seed).permutation(len(codes))
    return [perm[rows] for rows in _run_flwr(IidPartitioner(num_partitions=num_clients), codes[perm])]


def _dirichlet(codes: np.ndarray, cfg: PartitionConfig, num_clients: int, seed: int) -> Parts:
    """Label skew (Hsu et al. 2019): per class, client shares p ~ Dir(alpha); the class's rows, in
    random order, are dealt by multinomial(n_class, p) counts. Re-drawn until every client has
    min_partition_size rows, or topped up (`min_size_policy`): 2,000 clients over 8,000 rows at
    alpha 0.5 leave hundreds of clients short in every draw, so no re-draw ever succeeds.

    Written here rather than using flwr's DirichletPartitioner: it cuts each class at
    floor(cumsum(p) * n_class), so every class smaller than the number of clients goes wholly to
    the last client (WordNet's 10 largest classes by "lemma", 44,525 groups, over 8 clients:
    client 7 got 44,804 of 50,596 rows), and it scans all rows once per group (4.7 s there;
    0.2 s here).
    Multinomial counts have the same expectation without that bias; this runs in O(n log n).
    """
    group_sizes = np.bincount(codes)

    def draw(attempt_seed: int) -> Parts:
        rng = derive_rng(attempt_seed)
        shares = rng.dirichlet(np.full(num_clients, float(cfg.alpha)), size=len(group_sizes))
        counts = rng.multinomial(group_sizes, shares)  # (groups, clients), rows sum to group sizes
        client_of_slot = np.repeat(np.tile(np.arange(num_clients), len(group_sizes)), counts.ravel())
        # Rows grouped by code (the slot order above), in random order within each group.
        rows = np.lexsort((rng.random(len(codes)), codes))
        # each client's rows in slot order (a stable sort: O(n log n), not one scan per client)
        by_client = rows[np.argsort(client_of_slot, kind="stable")]
        return np.split(by_client, np.cumsum(counts.sum(axis=0))[:-1])

    return _first_valid(draw, seed, cfg, num_clients, DIRICHLET_TRIES, "partition.alpha", draw)


def _shards(codes: np.ndarray, cfg: PartitionConfig, num_clients: int, seed: int) -> Parts:
    """Pathological skew: each client gets exactly `classes_per_client` classes, and each class is
    split evenly among the clients that have it ("first-deterministic": client k gets class k mod C
    first, then random others, so all classes are used once num_clients >= C)."""
    from flwr_datasets.partitioner import PathologicalPartitioner  # late: start-up, as in _iid

    def draw(attempt_seed: int) -> Parts:
        partitioner = PathologicalPartitioner(
            num_partitions=num_clients,
            partition_by=_KEY,
            num_classes_per_partition=cfg.classes_per_client,
            class_assignment_mode="first-deterministic",
            shuffle=False,
            seed=attempt_seed,
        )
        try:
            return _run_flwr(partitioner, codes)
        except ValueError as err:  # a class drawn by more clients than it has examples
            raise ConfigError(
                f"partition.classes_per_client: {_first_sentence(err)}; lower it or num_clients"
            ) from None

    return _first_valid(draw, seed, cfg, num_clients, SHARDS_TRIES, "partition.classes_per_client")


def _quantity(codes: np.ndarray, cfg: PartitionConfig, num_clients: int, seed: int) -> Parts:
    """Quantity skew: client sizes ~ Dir(alpha) * n, rows dealt from a seeded permutation (labels
    iid). Written here: flwr's SizePartitioner takes fixed sizes, rejects empty clients and does
    not shuffle, so it would add nothing."""
    n = len(codes)

    def draw(attempt_seed: int, reject: bool = True) -> Parts | None:
        rng = derive_rng(attempt_seed)
        cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, float(cfg.alpha)))) * n).astype(np.int64)[:-1]
        sizes = np.diff(np.concatenate([[0], cuts, [n]]))
        if reject and sizes.min() < cfg.min_partition_size:  # rejected: skip the permutation
            return None
        return np.split(rng.permutation(n), cuts)

    whole = partial(draw, reject=False)
    return _first_valid(draw, seed, cfg, num_clients, QUANTITY_TRIES, "partition.alpha", whole)


SCHEMES: dict[str, Callable[[np.ndarray, PartitionConfig, int, int], Parts]] = {
    "iid": _iid,
    "dirichlet": _dirichlet,
    "shards": _shards,
    "quantity": _quantity,
}


# ---------------------------------------------------------------- helpers


def _run_flwr(partitioner: Partitioner, codes: np.ndarray) -> Parts:
    """Run a flwr partitioner on a (group code, row) table; return each partition's rows.

    The table has the "arrow" format because flwr reads columns with `np.array(column)`, which
    is zero-copy there and 0.8 s per 50k rows in the default python format (measured).
    Partitioners that compute every partition at once (flwr-datasets 0.6.1: Dirichlet,
    Pathological) keep them in `_partition_id_to_indices`; reading that dict skips
    `Dataset.select`, whose fingerprinting dill-hashes the index list (~1 s per client for 50k
    rows); tests/data check it equals `load_partition`. Their warnings (e.g. unused classes) are
    expected and documented on the schemes.
    """
    table = datasets.Dataset.from_dict({_KEY: codes, _ROW: np.arange(len(codes))})
    partitioner.dataset = table.with_format("arrow")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        num_partitions = partitioner.num_partitions  # computes the whole assignment
        assigned = getattr(partitioner, "_partition_id_to_indices", None)
        if isinstance(assigned, dict) and len(assigned) == num_partitions:
            return [np.asarray(assigned[k], dtype=np.int64) for k in range(num_partitions)]
        return [partition_rows(partitioner, k) for k in range(num_partitions)]


def partition_rows(partitioner: Partitioner, partition_id: int) -> np.ndarray:
    """Rows of one flwr partition through the public API (`load_partition`)."""
    return np.asarray(partitioner.load_partition(partition_id)[_ROW], dtype=np.int64)


def _first_valid(
    draw: Callable[[int], Parts | None],
    seed: int,
    cfg: PartitionConfig,
    num_clients: int,
    tries: int,
    field: str,
    whole_draw: Callable[[int], Parts] | None = None,
) -> Parts:
    """The first draw (seeds derived from `seed` and the attempt) whose clients all have at least
    min_partition_size rows. A scheme that can be topped up passes `whole_draw` (a draw that never
    rejects): with `min_size_policy` top_up its first draw is topped up at once, with auto when no
    draw succeeds. Otherwise ConfigError naming `field` when none of `tries` draws does."""
    policy = cfg.min_size_policy if whole_draw is not None else "redraw"
    for attempt in range(tries if policy != "top_up" else 0):
        parts = draw(derive_seed(seed, attempt))
        if parts is not None and min(len(p) for p in parts) >= cfg.min_partition_size:
            return parts
    if policy != "redraw":
        return top_up(whole_draw(derive_seed(seed, 0)), cfg.min_partition_size, derive_rng(derive_seed(seed, TOP_UP)))
    what = f"{cfg.scheme}(alpha={cfg.alpha})" if cfg.scheme in ("dirichlet", "quantity") else cfg.scheme
    also = " or set partition.min_size_policy: top_up" if whole_draw is not None else ""
    raise ConfigError(
        f"{field}: no {what} draw gave all {num_clients} clients "
        f">= {cfg.min_partition_size} examples in {tries} tries; raise {field} or lower "
        f"partition.min_partition_size / federation.num_clients{also}"
    )


def top_up(parts: Parts, minimum: int, rng: np.random.Generator) -> Parts:
    """`parts` with every client raised to `minimum` rows: each short client, in client order, takes
    random rows from whichever client is then the largest (never below `minimum` itself). The skew
    of the draw is kept where it is strongest: the rows moved are at most minimum x clients (4,000
    of 8,000 for 2,000 clients at minimum 2), taken from the clients that hold the most."""
    sizes = [len(p) for p in parts]
    if min(sizes) >= minimum:
        return parts
    if minimum * len(parts) > sum(sizes):
        raise ConfigError(f"partition.min_partition_size: {minimum} x {len(parts)} clients exceeds the rows; lower it")
    given: dict[int, list] = {}  # donor -> its rows in the random order they are given away
    extra: list[list] = [[] for _ in parts]
    donors = [(-n, k) for k, n in enumerate(sizes) if n > minimum]
    heapq.heapify(donors)
    for k in range(len(parts)):
        while sizes[k] < minimum:
            _, d = heapq.heappop(donors)
            pool = given.setdefault(d, list(rng.permutation(parts[d])))
            extra[k].append(pool.pop())
            sizes[d], sizes[k] = sizes[d] - 1, sizes[k] + 1
            if sizes[d] > minimum:
                heapq.heappush(donors, (-sizes[d], d))
    # a donor keeps what is left of its pool; a short client (never a donor) adds what it took
    return [np.asarray(given.get(k, p), dtype=np.int64) if not extra[k] else
            np.concatenate([p, np.asarray(extra[k], dtype=np.int64)]) for k, p in enumerate(parts)]  # fmt: skip


def _first_sentence(err: BaseException) -> str:
    return str(err).split(". ")[0].strip()
