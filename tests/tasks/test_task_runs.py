"""The tasks through the CLI and the data builders: a generation run on a user JSONL file
(instruction / response / category, like Dolly-15k), export, bad input, WordNet builders."""

import json

import pytest
import yaml
from fedsub_fixtures import INSTRUCTIONS, TASK_SECTIONS, one_line_error

from fedsub.app.cli import main
from fedsub.data.instructions import load_wordnet_choice, load_wordnet_instructions, parse_gloss


@pytest.fixture
def jsonl_config(tmp_path):
    rows = [
        {"instruction": i, "response": r, "category": ["define", "use"][k // 3]}
        for k, (i, r) in enumerate(INSTRUCTIONS)
    ]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 3))
    config = {
        "name": "gen",
        **TASK_SECTIONS["generation"],
        "data": {
            "dataset": str(tmp_path / "data.jsonl"),
            "text_column": "instruction",
            "label_column": "category",
            "test_fraction": 0.25,
        },
        "partition": {"scheme": "iid", "min_partition_size": 2},
        "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 1},
        "methods": ["fedit"],
    }
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_generation_run_on_a_jsonl_file_then_export_as_a_causal_lm(jsonl_config, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    assert main(["run", str(jsonl_config), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "fedit" / "summary.json").read_text())
    assert summary["final_accuracy"] is None and 0.0 <= summary["final_rougeL"] <= 1.0
    assert summary["final_perplexity"] > 1 and "ROUGE-L" in (out / "results.md").read_text()
    assert main(["export", str(out), "--format", "merged", "--out", str(tmp_path / "hf")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert model.config.num_hidden_layers == 2


@pytest.mark.parametrize(
    "override,expected",
    [
        ("task.kind=translation", "field task.kind:"),
        ("task.kind=image_classification", "field task.kind: image_classification cannot use"),
        ("task.response_column=answer", "field task.response_column: no column 'answer'"),
    ],
)
def test_bad_task_input_exits_2_with_one_line(jsonl_config, tmp_path, capsys, override, expected):
    assert main(["run", str(jsonl_config), "--out", str(tmp_path / "bad"), "--quiet", "--set", override]) == 2
    assert expected in one_line_error(capsys)


def test_lora_methods_refuse_conv2d_targets_in_one_line(tmp_path, capsys):
    config = {
        "name": "v",
        **TASK_SECTIONS["image_classification"],
        "data": {"dataset": "digits", "num_classes": 3, "max_train_per_class": 6, "max_test_per_class": 2},
        "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 1},
        "methods": ["fedit"],
    }
    config["model"] = {**config["model"], "target_modules": ["_conv_stem"]}
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "field model.target_modules: LoRA methods adapt linear layers, not the Conv2d '_conv_stem'" in err


def test_parse_gloss_splits_definition_and_examples():
    assert parse_gloss('move fast; "he ran"; "she runs daily"  ') == ("move fast", ["he ran", "she runs daily"])


def test_wordnet_instruction_and_choice_builders():
    source = load_wordnet_instructions()
    instructions = list(source.columns["instruction"])
    assert len(source) == 150582 and instructions[0] == "Define the word 'entity'."
    assert sum(i.startswith("Use the word") for i in instructions) == 150582 - 117659  # one per synset with an example
    choice = load_wordnet_choice()
    options = choice.columns["choices"][10].split("\x1f")
    assert len(choice) == 117659 and len(options) == 4 and len(set(options)) == 4
    assert set(choice.labels.tolist()) == {0, 1, 2, 3}


def test_hellaswag_style_jsonl_with_a_list_of_endings_runs_multiple_choice(tmp_path):
    """The HF / local-file path of HellaSwag: ctx, endings (a list), label."""
    from fedsub_fixtures import CHOICES, tiny_config

    rows = [
        {"ctx": c, "endings": e, "label": a, "activity_label": f"topic{k % 2}"}
        for k, (c, e, a) in enumerate(CHOICES * 6)
    ]
    (tmp_path / "hs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config(
        task={"kind": "multiple_choice", "choices_column": "endings"},
        methods=["fedit"],
        data={"dataset": str(tmp_path / "hs.jsonl"), "text_column": "ctx", "test_fraction": 0.25},
        partition={"scheme": "dirichlet", "by": "activity_label", "min_partition_size": 2},
        federation={"num_clients": 2, "clients_per_round": 2, "rounds": 1},
    )
    from fedsub.app.run import run_experiment

    summary = run_experiment(cfg, tmp_path / "run", quiet=True)[0]
    partition = json.loads((tmp_path / "run" / "partition.json").read_text())
    assert (
        partition["scheme"]["by"] == "activity_label" and partition["summary"]["num_examples"] == 12
    )  # 18 rows, a quarter held out
    assert summary["rounds"] == 1 and summary["final_accuracy"] * 6 == pytest.approx(
        round(summary["final_accuracy"] * 6)
    )  # k of 6 test rows


def test_an_hf_image_classifier_folder_trains_with_lora_and_galore(tmp_path):
    """Any HF image-classification model: a tiny random ViT saved as a local folder."""
    from fedsub_fixtures import tiny_config
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from fedsub.app.run import run_experiment

    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    cfg = tiny_config(
        task={"kind": "image_classification"},
        methods=["fedit", "fedgalore"],
        model={"name": str(tmp_path / "vit"), "target_modules": ["q_proj", "v_proj"]},
        data={"dataset": "digits", "num_classes": 3, "max_train_per_class": 8, "max_test_per_class": 4},
        federation={"num_clients": 2, "clients_per_round": 2, "rounds": 1},
    )
    summaries = run_experiment(cfg, tmp_path / "run", quiet=True)
    assert [s["method"] for s in summaries] == ["fedit", "fedgalore"]
    # fedit uploads rank-8 LoRA on the 4 q/v matrices (32 x 32) and the dense 3-class head, 2 clients, float32
    assert summaries[0]["bytes_up_per_round"] == 2 * 4 * (4 * (8 * 32 + 32 * 8) + 32 * 3 + 3)
    layers = [f"vit.layers.{i}.attention.{m}_proj" for i in (0, 1) for m in ("q", "v")]
    from fedsub.app.export import read_final_model

    fedit, _ = read_final_model(tmp_path / "run" / "fedit" / "final_model.safetensors")
    assert {f"base_model.model.{n}.lora_{f}.default.weight" for n in layers for f in "AB"} <= set(fedit)
    fedgalore, _ = read_final_model(tmp_path / "run" / "fedgalore" / "final_model.safetensors")
    assert set(fedgalore) == {f"{n}.weight" for n in layers} | {
        "classifier.weight",
        "classifier.bias",
    }  # GaLore trains the q/v weights densely
