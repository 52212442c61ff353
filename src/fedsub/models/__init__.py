"""Models: decide once what kind of model a config asks for (`plan_model` -> `ModelPlan`), and load it.

plan.py    the decision (sequence classifier, encoder with a multiple-choice head, causal LM, image
           classifier) and where the model loads from
heads.py   which modules of a loaded model are its task head and which are adapted
hf.py      Hugging Face auto classes and tokenizers by folder or hub id, tiny random copies
lm.py      causal LMs: the offline SmolLM2-135M-Instruct from its GGUF, cached once
vision.py  EfficientNet-Lite0 (architecture here, weights from a package) and HF image classifiers
"""

from fedsub.models.heads import adaptable, head_module_names, target_linear_names
from fedsub.models.plan import ModelKind, ModelPlan, plan_model

__all__ = ["ModelKind", "ModelPlan", "adaptable", "head_module_names", "plan_model", "target_linear_names"]
