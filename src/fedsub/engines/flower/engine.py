"""`engine: flower` without a SuperLink: the ServerApp's round loop over the in-process grid."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from fedsub.config import ExperimentConfig, MethodSpec
from fedsub.engines.flower.apps import client_app
from fedsub.engines.flower.client import CONFIG_KEY, METHOD_KEY, OUT_KEY, runtime_for
from fedsub.engines.flower.grid import LocalGrid
from fedsub.engines.flower.server import FlowerServer, run_config_text
from fedsub.engines.setup import FederatedData


class FlowerLocal:
    """One method's run through Flower's Message/ClientApp path, every node in this process.

    With `resume`, a run killed in this process (its nodes' context.state died with it) continues
    from the ServerApp's checkpoint, as a resumed deployment does (see fedsub.engines.flower.server)."""

    def __init__(
        self, cfg: ExperimentConfig, spec: MethodSpec, data: FederatedData, out_dir: Path, resume: bool = False
    ):
        self.cfg, self.spec, self.data, self.out_dir = cfg, spec, data, out_dir
        self.server = FlowerServer(cfg, spec, data, out_dir, resume=resume)
        self.checkpoint_dir = self.server.checkpoint_dir

    def run_config(self) -> dict:
        return {CONFIG_KEY: run_config_text(self.cfg), METHOD_KEY: self.spec.key, OUT_KEY: str(self.out_dir.parent)}

    def run(
        self,
        on_round: Callable[[dict], None] | None = None,
        on_client: Callable[[], None] | None = None,
        faults: dict[int, str] | None = None,
        node_configs: dict[int, dict] | None = None,
    ) -> list[dict]:
        """`node_configs`: each node's extra node config (data.source nodes: data=PATH, test=PATH)."""
        run_config = self.run_config()
        if self.cfg.data.source == "global":
            runtime_for(run_config, data=self.data)  # the nodes share this process's loaded data
        grid = LocalGrid(client_app, self.cfg.federation.num_clients, run_config, faults, node_configs)
        return self.server.run_with_grid(grid, on_round)

    def save_final_model(self, label_names: list[str]) -> None:
        self.server.save_final_model(label_names)

    @property
    def state(self):
        return self.server.state
