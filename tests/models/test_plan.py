"""The model plan: what kind of model a config asks for is decided once per run, from the task kind
and the model (an HF config read from disk only where the name leaves it open)."""

import json

import pytest
from fedsub_fixtures import tiny_config, write_csv_experiment

from fedsub.models import ModelKind, plan_model


def folder_model(tmp_path, architecture: str) -> str:
    folder = tmp_path / architecture
    folder.mkdir()
    model_type = "llama" if "Llama" in architecture else "bert"
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture], "model_type": model_type}))
    return str(folder)


@pytest.mark.parametrize(
    "task, model, kind",
    [
        ("classification", "minilm", ModelKind.SEQUENCE_CLASSIFIER),
        ("multiple_choice", "minilm", ModelKind.MULTIPLE_CHOICE),
        ("image_classification", "efficientnet_lite0", ModelKind.IMAGE_CLASSIFIER),
    ],
)
def test_the_task_and_the_model_name_decide_the_kind(task, model, kind):
    plan = plan_model(tiny_config(task={"kind": task}, model={"name": model, "tiny": True}))
    assert plan.kind is kind and plan.needs_head
    assert (plan.path is None) == (model == "efficientnet_lite0")  # fedsub's own architecture, no HF folder


def test_multiple_choice_reads_an_unknown_models_config_once_to_choose_the_scoring(tmp_path, monkeypatch):
    import fedsub.models.plan as plan_module

    reads = []
    monkeypatch.setattr(plan_module, "is_causal_lm", lambda path: reads.append(path) or path.endswith("ForCausalLM"))
    causal, encoder = folder_model(tmp_path, "LlamaForCausalLM"), folder_model(tmp_path, "BertForMaskedLM")
    plan = plan_model(tiny_config(task={"kind": "multiple_choice"}, model={"name": causal}))
    assert plan.kind is ModelKind.CAUSAL_LM and plan.causal_lm and not plan.needs_head
    assert (
        plan_model(tiny_config(task={"kind": "multiple_choice"}, model={"name": encoder})).kind
        is ModelKind.MULTIPLE_CHOICE
    )
    assert reads == [causal, encoder]
    assert plan_model(tiny_config(model={"name": causal})).kind is ModelKind.SEQUENCE_CLASSIFIER and reads == [
        causal,
        encoder,
    ]


def test_is_causal_lm_reads_the_architecture(tmp_path):
    from fedsub.models.lm import is_causal_lm

    assert is_causal_lm(folder_model(tmp_path, "LlamaForCausalLM"))
    assert not is_causal_lm(folder_model(tmp_path, "BertForMaskedLM"))


def test_a_run_plans_its_model_once_for_all_its_methods(tmp_path, monkeypatch):
    import fedsub.engines.setup as setup
    from fedsub.app.run import run_experiment
    from fedsub.config import load_config

    plans = []
    monkeypatch.setattr(setup, "plan_model", lambda cfg: plans.append(plan_model(cfg)) or plans[-1])
    cfg = load_config(write_csv_experiment(tmp_path, ["fedit", "ffa_lora"]), ["federation.rounds=1"])
    run_experiment(cfg, tmp_path / "run", quiet=True)
    assert len(plans) == 1 and plans[0].kind is ModelKind.SEQUENCE_CLASSIFIER
