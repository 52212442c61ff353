"""End to end through the CLI on a tiny random model and a local CSV file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fedsub_fixtures import one_line_error, write_csv_experiment

from fedsub.app.cli import main
from fedsub.engines.rounds import TIMING_KEYS

METHODS = ["fedavg_full", "fedit", "ffa_lora"]


@pytest.fixture
def csv_config(tmp_path):
    return write_csv_experiment(tmp_path, METHODS)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_run_writes_the_run_directory_for_every_method(csv_config, tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(csv_config), "--out", str(out), "--quiet"]) == 0
    for name in [
        "config.yaml",
        "partition.json",
        "label_histogram.csv",
        "partition_heatmap.png",
        "summary.json",
        "results.md",
        "accuracy.png",
    ]:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert [s["method"] for s in summary["methods"]] == METHODS
    for method in METHODS:
        records = read_jsonl(out / method / "metrics.jsonl")
        assert [r["round"] for r in records] == [1, 2]
        assert all(len(r["clients"]) == 2 and r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in records)
        assert 0.0 <= records[-1]["accuracy"] <= 1.0 and records[-1]["test_loss"] > 0
        assert json.loads((out / method / "summary.json").read_text())["final_accuracy"] == records[-1]["accuracy"]
    table = (out / "results.md").read_text()
    assert all(f"| {m} |" in table for m in METHODS)


def test_same_config_and_seed_give_identical_metrics(csv_config, tmp_path):
    for out in ("a", "b"):
        assert main(["run", str(csv_config), "--out", str(tmp_path / out), "--quiet", "--set", "methods=fedit"]) == 0
    a = read_jsonl(tmp_path / "a" / "fedit" / "metrics.jsonl")
    b = read_jsonl(tmp_path / "b" / "fedit" / "metrics.jsonl")
    assert without_timing(a) == without_timing(b)
    c_out = tmp_path / "c"
    assert (
        main(["run", str(csv_config), "--out", str(c_out), "--quiet", "--set", "methods=fedit", "--set", "seed=1"]) == 0
    )
    assert without_timing(read_jsonl(c_out / "fedit" / "metrics.jsonl")) != without_timing(a)


def test_existing_run_directory_is_not_overwritten(csv_config, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["run", str(csv_config), "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lrr=0.1", "field train.lrr: unknown key"),
        ("federation.rounds=many", "field federation.rounds"),
        ("methods=fedsgd", "unknown method 'fedsgd'"),
        ("partition.alpha=0", "field partition.alpha"),
        ("federation.clients_per_round=9", "exceeds num_clients"),
        ("data.dataset=/nonexistent/data.csv", "/nonexistent/data.csv"),
        ("model.name=/nonexistent/model", "field model.name"),
    ],
)
def test_bad_config_exits_2_with_one_line(csv_config, tmp_path, capsys, override, expected):
    assert main(["run", str(csv_config), "--out", str(tmp_path / "x"), "--quiet", "--set", override]) == 2
    assert expected in one_line_error(capsys)


def test_console_script_reports_a_missing_config_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fedsub", "run", str(tmp_path / "nope.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fedsub: error: config file {tmp_path / 'nope.yaml'} not found; pass the path of a YAML file (see configs/)"
    ]


def test_methods_lists_registered_methods_with_options(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert all(m in out for m in METHODS) and "rank = 8" in out


def test_the_console_script_entry_point_resolves():
    """pyproject's `fedsub = "module:function"` names the CLI's main (the installed script calls it)."""
    import importlib
    import tomllib
    from pathlib import Path

    from fedsub.app.cli import main as cli_main

    target = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]["fedsub"]
    module, _, function = target.partition(":")
    assert getattr(importlib.import_module(module), function) is cli_main


def test_a_reader_that_leaves_early_gets_no_traceback():
    # `fedsub methods | head -1`: the pipe's reader is gone before fedsub writes (closed right after
    # the start; the import alone takes longer), so every write raises BrokenPipeError
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsub", "methods"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in err, err.decode()
