"""Real weights: all-MiniLM-L6-v2 from its package, on real WordNet definitions (1 round, 2 clients)."""

import json

import pytest

from fedsub.cli import main


@pytest.mark.slow
def test_minilm_fedit_round_on_wordnet(tmp_path):
    out = tmp_path / "run"
    args = ["run", "configs/demo.yaml", "--out", str(out), "--quiet",
            "--set", "methods=fedit", "--set", "federation.rounds=1", "--set", "federation.num_clients=2",
            "--set", "federation.clients_per_round=2", "--set", "data.num_classes=2",
            "--set", "data.max_train_per_class=16", "--set", "data.max_test_per_class=8",
            "--set", "partition.min_partition_size=4", "--set", "train.local_steps=2"]
    assert main(args) == 0
    (record,) = [json.loads(line) for line in (out / "fedit" / "metrics.jsonl").read_text().splitlines()]
    assert record["clients"] == [0, 1]
    assert 0.0 <= record["accuracy"] <= 1.0 and 0 < record["test_loss"] < 5
    # rank-8 LoRA on q, k, v and the three dense layers of 6 layers of width 384 (+ pooler), plus the head:
    lora = 6 * (3 * 8 * (384 + 384) + 8 * (384 + 384) + 8 * (384 + 1536) + 8 * (1536 + 384)) + 8 * (384 + 384)
    head = 2 * 384 + 2
    assert record["bytes_up"] == 2 * 4 * (lora + head)
