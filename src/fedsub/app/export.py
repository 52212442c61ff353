"""The global model of a finished method: saved at the end of its run (fedsub.engines.final_model),
exported for Hugging Face.

`<method>/final_model.safetensors` holds what the method changed on top of the rebuilt starting
model (the seeded base + the method's `prepare_model`): the server's global tensors, every trainable
tensor and every LoRA factor. For LoRA methods that is the adapters and the head (about 1.4 MB on
MiniLM at rank 8); dense methods (fedavg_full, fedftg, fedgalore) and flora (which merges into the
base weights) save the dense weights they changed.

`fedsub export RUN_DIR --format peft|merged --out DIR` rebuilds that model on the CPU and writes
- peft: a PEFT adapter folder (`PeftModel.from_pretrained(base, DIR)`), for methods whose global
  model is LoRA factors + head on the unchanged base;
- merged: an HF folder (`AutoModelForSequenceClassification.from_pretrained(DIR)`, or the task's
  auto class: AutoModelForCausalLM for generation and log-likelihood multiple choice,
  AutoModelForMultipleChoice, AutoModelForImageClassification), every method; LoRA factors are
  merged into the weights. Both folders also get the tokenizer (image models: the image processor).
EfficientNet-Lite0 (fedsub's own architecture, not an HF model) is refused with one line.
Tested: both reproduce the run's final accuracy and test loss (float32). In a bfloat16 run the merged
weights W + s·BA are rounded to bf16, so the merged model's test loss moves in the 4th digit
(measured on the tiny test run: 1.10524 vs 1.10534); the dense methods' export stays exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from fedsub.config import ExperimentConfig, MethodSpec, load_config
from fedsub.core.registry import build_method
from fedsub.engines.final_model import FINAL_MODEL, FORMAT_TAG
from fedsub.engines.setup import FederatedData, build_workspace
from fedsub.errors import ConfigError
from fedsub.models import ModelPlan, plan_model


def read_final_model(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT_TAG:
            raise ConfigError(f"{path}: not a fedsub final model (format {metadata.get('format')!r})")
        return {name: handle.get_tensor(name) for name in handle.keys()}, metadata


def rebuild_global_model(
    cfg: ExperimentConfig, plan: ModelPlan, spec: MethodSpec, tensors: dict[str, torch.Tensor], label_names: list[str]
):
    """The starting model of the run (seeded base + prepare_model) with the saved tensors written in."""
    labels_only = FederatedData(
        None, None, None, [], label_names, {}, plan
    )  # the model needs only the labels and its plan
    workspace = build_workspace(
        cfg.model_copy(update={"device": "cpu"}), build_method(spec.name, spec.options), labels_only
    )
    workspace.write(tensors)
    workspace.model.eval()
    return workspace.model


def pick_method(cfg: ExperimentConfig, run_dir: Path, key: str | None) -> MethodSpec:
    keys = [m.key for m in cfg.methods]
    if key is None:
        saved = [k for k in keys if (run_dir / k / FINAL_MODEL).is_file()]
        if len(saved) != 1:
            raise ConfigError(
                f"--method: {run_dir} holds {len(saved)} finished methods with a model "
                f"({', '.join(saved) or 'none'}); name one"
            )
        key = saved[0]
    if key not in keys:
        raise ConfigError(f"--method: {key!r} is not a method of {run_dir} (it has {', '.join(keys)})")
    return cfg.methods[keys.index(key)]


def export_model(run_dir: Path, out: Path, fmt: str, key: str | None = None) -> Path:
    """Export one finished method of a run directory as a PEFT adapter or a merged HF model."""
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a fedsub run directory (no config.yaml); pass the --out of a fedsub run")
    cfg = load_config(run_dir / "config.yaml")
    spec = pick_method(cfg, run_dir, key)
    path = run_dir / spec.key / FINAL_MODEL
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: method {spec.key} is unfinished or was run before fedsub saved final models; re-run it"
        )
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty; choose another folder")
    plan = plan_model(cfg)
    if plan.path is None:
        raise ConfigError(
            f"fedsub export: {cfg.model.name} is not a Hugging Face model and has no HF folder format; its final "
            f"weights are {path} (safetensors)"
        )
    tensors, metadata = read_final_model(path)
    label_names = json.loads(metadata["label_names"])
    model = rebuild_global_model(cfg, plan, spec, tensors, label_names)
    if fmt == "peft":
        check_peft_exportable(model, tensors, spec)
    else:
        model = merged(model)
    if cfg.task.kind in ("classification", "image_classification"):  # a causal LM / choice head has no class names
        set_label_names(model, label_names)
    model.save_pretrained(str(out))
    plan.input_processor().save_pretrained(str(out))  # the tokenizer, or the image processor
    return out


def check_peft_exportable(model: Any, tensors: dict[str, torch.Tensor], spec: MethodSpec) -> None:
    """A PEFT adapter is LoRA factors + the saved head on the unchanged base model."""
    from peft import PeftModel  # late: peft takes ~3.7 s to import here; a dense method's export never needs it

    dense = [n for n in tensors if ".lora_" not in n and ".modules_to_save." not in n]
    if not isinstance(model, PeftModel) or dense:
        changed = f" (it changes {dense[0]})" if dense else ""
        raise ConfigError(
            f"--format peft: method {spec.key} ({spec.name}) is not a LoRA adapter on the base model{changed}; use "
            f"--format merged"
        )


def merged(model: Any) -> Any:
    from peft import PeftModel  # late: start-up, as in check_peft_exportable

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def set_label_names(model: Any, label_names: list[str]) -> None:
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: index for index, name in enumerate(label_names)}
