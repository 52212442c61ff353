"""`fedsub flower split`: one experiment's global dataset written as per-site files, for trying an
own-data federation (data.source nodes) on one machine.

Site k gets exactly client k's rows of the simulator's partition, in the partition's order
(`site-k/train.jsonl`: {"text", "label"} with the label's name); with federated_eval on
test_partition, its share of the test set (`site-k/test.jsonl`); the server gets the whole test
split (`server-test.jsonl`). `experiment.yaml` is the same experiment with `data.source: nodes`,
the label space declared and `engine: flower`, and `nodes.txt` the node config of each site. Run
with those files, a federation gives the simulator's metrics.jsonl (timing aside; tested on the
in-process grid).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from fedsub.config import ExperimentConfig, config_to_dict
from fedsub.core.io import atomic_write_text
from fedsub.data.client_eval import split_test_by_partition
from fedsub.engines.setup import partition_global
from fedsub.errors import ConfigError


def jsonl(dataset, rows: np.ndarray, names: list[str]) -> str:
    texts, labels = dataset["text"], dataset["label"]
    return "".join(json.dumps({"text": texts[int(r)], "label": names[labels[int(r)]]}) + "\n" for r in rows)


def write_sites(cfg: ExperimentConfig, out: Path) -> list[Path]:
    """The site files, the server's test file, experiment.yaml and nodes.txt; the files written."""
    if cfg.data.source != "global":
        raise ConfigError("data.source: fedsub flower split needs a global dataset to split (data.source: global)")
    if cfg.task.kind != "classification":
        raise ConfigError(f"task.kind: fedsub flower split writes text classification sites, not {cfg.task.kind}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out: {out} is not empty; choose an empty folder (site files are never overwritten)")
    splits, parts = partition_global(cfg)
    names = list(splits.label_names)
    fe = cfg.federated_eval
    tests = None
    if fe.enabled and fe.data == "test_partition":
        train_labels, test_labels = np.asarray(splits.train["label"]), np.asarray(splits.test["label"])
        tests = split_test_by_partition(parts, train_labels, test_labels, cfg.seed)
    written, node_lines = [], []
    for k, rows in enumerate(parts):
        site = out / f"site-{k}"
        written.append(site / "train.jsonl")
        atomic_write_text(written[-1], jsonl(splits.train, np.asarray(rows), names))
        node = f"partition-id={k} data={json.dumps(str(written[-1].resolve()))}"  # flwr parses values as TOML
        if tests is not None:
            written.append(site / "test.jsonl")
            atomic_write_text(written[-1], jsonl(splits.test, tests[k], names))
            node += f" test={json.dumps(str(written[-1].resolve()))}"
        node_lines.append(node)
    server_test = out / "server-test.jsonl"
    atomic_write_text(server_test, jsonl(splits.test, np.arange(len(splits.test)), names))
    experiment = config_to_dict(cfg)
    experiment["engine"] = "flower"
    experiment["data"] = {
        **{k: v for k, v in experiment["data"].items() if k not in ("num_classes", "max_train_per_class", "max_test_per_class", "val_fraction", "eval_split")},  # noqa: E501
        "source": "nodes", "labels": names, "dataset": str(server_test.resolve()),
        "text_column": "text", "label_column": "label",
    }  # fmt: skip
    atomic_write_text(out / "experiment.yaml", yaml.safe_dump(experiment, sort_keys=False))
    atomic_write_text(out / "nodes.txt", "".join(line + "\n" for line in node_lines))
    return [*written, server_test, out / "experiment.yaml", out / "nodes.txt"]
