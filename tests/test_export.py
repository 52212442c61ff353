"""`fedsub export`: the saved final global model, exported as PEFT or merged, reproduces the run's
final test metrics on the run's own test set."""

import json

import pytest
import torch
from fedsub_fixtures import write_csv_experiment
from safetensors import safe_open

from fedsub.app.cli import main
from fedsub.app.export import FINAL_MODEL
from fedsub.config import load_config
from fedsub.engines.setup import prepare_data
from fedsub.models import plan_model

LORA = ["fedit", "ffa_lora", "flexlora"]
DENSE = ["flora", "fedavg_full", "fedgalore", "fedftg"]  # flora merges into the base weights


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    config = write_csv_experiment(tmp, LORA + DENSE, federation={"num_clients": 3, "clients_per_round": 3, "rounds": 2})
    assert main(["run", str(config), "--out", str(tmp / "run"), "--quiet"]) == 0
    cfg = load_config(tmp / "run" / "config.yaml")
    return tmp / "run", cfg, prepare_data(cfg, tmp / "data")


def final_record(run_dir, key):
    return json.loads((run_dir / key / "metrics.jsonl").read_text().splitlines()[-1])


def evaluate(model, data):
    return data.task.evaluate(model, data.test, 128, "cpu")


def assert_reproduces(metrics, record):
    assert metrics["accuracy"] == record["accuracy"]
    assert metrics["macro_f1"] == record["macro_f1"]
    assert metrics["test_loss"] == pytest.approx(record["test_loss"], rel=1e-6, abs=0)


@pytest.mark.parametrize("key", LORA + DENSE)
def test_merged_export_reproduces_the_final_test_metrics(finished_run, tmp_path, key):
    from transformers import AutoModelForSequenceClassification

    run_dir, cfg, data = finished_run
    assert main(["export", str(run_dir), "--method", key, "--format", "merged", "--out", str(tmp_path / "m")]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    assert model.config.id2label == dict(enumerate(data.label_names))
    record = final_record(run_dir, key)
    assert_reproduces(evaluate(model, data), record)
    untrained = plan_model(cfg).load(len(data.label_names), cfg.seed)  # what a broken export would be
    assert evaluate(untrained, data)["test_loss"] != pytest.approx(record["test_loss"], rel=1e-6, abs=0)


@pytest.mark.parametrize("key", LORA)
def test_peft_export_loads_on_the_base_model_and_reproduces_the_final_metrics(finished_run, tmp_path, key):
    from peft import PeftModel

    run_dir, cfg, data = finished_run
    assert main(["export", str(run_dir), "--method", key, "--format", "peft", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "adapter_config.json").is_file()
    base = plan_model(cfg).load(len(data.label_names), cfg.seed)  # the tiny base, rebuilt from the seed
    model = PeftModel.from_pretrained(base, tmp_path / "p")
    assert_reproduces(evaluate(model, data), final_record(run_dir, key))


@pytest.mark.parametrize("key", DENSE)
def test_peft_export_of_a_dense_method_exits_2_with_one_line(finished_run, tmp_path, capsys, key):
    run_dir, _, _ = finished_run
    assert main(["export", str(run_dir), "--method", key, "--format", "peft", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--format merged" in err and key in err
    assert not (tmp_path / "p").exists()


def test_lora_final_model_holds_only_adapters_and_head(finished_run):
    run_dir, _, _ = finished_run
    with safe_open(str(run_dir / "fedit" / FINAL_MODEL), framework="pt") as handle:
        names = list(handle.keys())
        assert handle.metadata()["key"] == "fedit" and handle.metadata()["rounds"] == "2"
    assert names and all(".lora_" in n or ".modules_to_save." in n for n in names)
    with safe_open(str(run_dir / "fedavg_full" / FINAL_MODEL), framework="pt") as handle:
        dense = list(handle.keys())
        assert not any("embeddings" in n for n in dense)  # frozen tensors are rebuilt, not saved
        tensor = handle.get_tensor(dense[0])
    assert tensor.dtype == torch.float32


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--method", "fedsgd", "--format", "merged"], "'fedsgd' is not a method"),
        (["--format", "merged"], "name one"),  # several methods: --method is needed
        (["--method", "fedit", "--format", "merged", "--out-exists"], "is not empty"),
    ],
)
def test_export_bad_input_exits_2_with_one_line(finished_run, tmp_path, capsys, args, expected):
    run_dir, _, _ = finished_run
    out = tmp_path / "out"
    if "--out-exists" in args:
        args = [a for a in args if a != "--out-exists"]
        out.mkdir()
        (out / "keep.txt").write_text("x")
    assert main(["export", str(run_dir), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err


def test_export_of_a_run_without_final_model_names_the_file(finished_run, tmp_path, capsys):
    run_dir, _, _ = finished_run
    assert main(["export", str(tmp_path), "--format", "merged", "--out", str(tmp_path / "o")]) == 2
    assert "not a fedsub run directory" in capsys.readouterr().err
    copy = tmp_path / "old_run"
    copy.mkdir()
    (copy / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    assert main(["export", str(copy), "--method", "fedit", "--format", "merged", "--out", str(tmp_path / "o")]) == 2
    assert FINAL_MODEL in capsys.readouterr().err
