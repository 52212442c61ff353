"""A real loopback deployment: a SuperLink and 2 SuperNodes on 127.0.0.1, 2 rounds of fedit."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("flwr")

from fedsub_fixtures import write_csv_experiment  # noqa: E402

from fedsub.app.run import run_experiment  # noqa: E402
from fedsub.config import load_config  # noqa: E402
from fedsub.engines.flower.deploy import CONNECTION, flwr_json, write_connection  # noqa: E402
from fedsub.engines.flower.loopback import Loopback  # noqa: E402


@pytest.mark.slow
def test_superlink_and_two_supernodes_run_two_rounds(tmp_path):
    config = write_csv_experiment(
        tmp_path, ["fedit"], federation={"num_clients": 2, "clients_per_round": 2, "rounds": 2}
    )
    with Loopback(tmp_path / "flower", nodes=2) as link:
        overrides = [
            "engine=flower",
            f"flower.superlink={link.address}",
            "flower.insecure=true",
            "flower.round_timeout=180",
            "flower.startup_timeout=120",
            "flower.run_timeout=480",
        ]
        cfg = load_config(config, overrides)
        try:
            summaries = run_experiment(cfg, tmp_path / "run", quiet=True)
        except Exception as err:
            raise AssertionError(f"{err}\n{link.logs()}") from err
        runs = flwr_json(["ls", CONNECTION], write_connection(tmp_path / "cli-home", cfg))["runs"]
    assert [r["status"] for r in runs] == ["finished:completed"]
    records = [json.loads(line) for line in (tmp_path / "run" / "fedit" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        assert record["aggregated"] == [0, 1] and record["dropped"] == [] and record["skipped"] is None
        assert 0 <= record["accuracy"] <= 1 and record["train_loss"] > 0
        assert record["bytes_up"] == record["bytes_down"] > 0  # fedit: A and B both ways
    assert summaries[0]["rounds"] == 2 and summaries[0]["final_accuracy"] == records[-1]["accuracy"]
    for name in (
        "config.yaml",
        "partition.json",
        "summary.json",
        "fedit/final_model.safetensors",
        "fedit/summary.json",
    ):
        assert (tmp_path / "run" / name).is_file(), name
    assert not link.processes  # closed: every SuperLink / SuperNode process group is gone
