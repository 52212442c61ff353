"""The engine interface: what `fedsub run` drives for one method, whichever engine carries it.

Engines: the simulator (`Simulation`), Flower's in-process grid (`FlowerLocal`) and a SuperLink
submission (`FlowerDeployment`). The first two drive the RoundLoop in this process; a deployment's
ServerApp drives it on the SuperLink's machine and writes the method directory there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from fedsub.config import ExperimentConfig, MethodSpec
from fedsub.engines.setup import FederatedData
from fedsub.engines.simulation import Simulation


class Engine(Protocol):
    """One method's run. `run` returns its records (one per round, as metrics.jsonl holds them)."""

    checkpoint_dir: Path  # <method>/checkpoint: what --resume continues from

    def run(
        self, on_round: Callable[[dict], None] | None = None, on_client: Callable[[], None] | None = None
    ) -> list[dict]: ...

    def save_final_model(self, label_names: list[str]) -> None:
        """Write <method>/final_model.safetensors (a deployment's ServerApp already has: nothing to do)."""


def make_engine(
    cfg: ExperimentConfig, spec: MethodSpec, data: FederatedData, method_dir: Path, resume: bool = False
) -> Engine:
    """The simulator, or (engine: flower) Flower's in-process grid or a SuperLink submission."""
    if cfg.engine == "flower":
        from fedsub.engines.flower import flower_engine  # late: flwr is an optional extra, imported only when asked for

        return flower_engine(cfg, spec, data, method_dir, resume)
    return Simulation(cfg, spec, data, method_dir, resume=resume)
