"""--tensorboard: event files hold every round's numbers; without the package, one line says how to install it."""

import importlib.util
import json

import numpy
from fedsub_fixtures import write_csv_experiment

from fedsub.app.cli import main


def test_tensorboard_events_hold_the_metrics_of_every_round(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write_csv_experiment(tmp_path, ["fedit"])
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet", "--tensorboard"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "fedit" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "run" / "fedit" / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {
        "eval/accuracy",
        "train/train_loss",
        "bytes/bytes_up",
        "bytes/cumulative_bytes",
        "seconds/seconds_round",
    } <= set(scalars)
    assert any(tag.startswith("diag/") for tag in scalars)  # fedit's subspace diagnostics
    loss = events.Scalars("train/train_loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == [float(numpy.float32(r["train_loss"])) for r in records]  # stored as float32
    cumulative = [e.value for e in events.Scalars("bytes/cumulative_bytes")]
    total = records[0]["bytes_up"] + records[0]["bytes_down"]
    assert cumulative == [total, total + records[1]["bytes_up"] + records[1]["bytes_down"]]


def test_tensorboard_flag_without_the_package_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a)
    )
    config = write_csv_experiment(tmp_path, ["fedit"])
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet", "--tensorboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'fedsub[tensorboard]'" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_generation_metrics_are_filed_under_eval():
    from fedsub.reporting.tblog import scalar_tag

    assert [scalar_tag(k) for k in ("rougeL", "bleu4", "perplexity", "seconds_ajive", "ajive_joint_rank_mean")] == [
        "eval/rougeL", "eval/bleu4", "eval/perplexity", "seconds/seconds_ajive",
        "method/ajive_joint_rank_mean"]  # fmt: skip
