"""`engine: flower` without a SuperLink: the ServerApp loop over the in-process grid."""

from __future__ import annotations

from typing import Callable

from fedsub.engines.flower.apps import client_app
from fedsub.engines.flower.client import CONFIG_KEY, METHOD_KEY, OUT_KEY, runtime_for
from fedsub.engines.flower.grid import LocalGrid
from fedsub.engines.flower.server import FlowerServer, run_config_text


class FlowerLocal(FlowerServer):
    """One method's run through Flower's Message/ClientApp path, every node in this process."""

    def run_config(self) -> dict:
        return {CONFIG_KEY: run_config_text(self.cfg), METHOD_KEY: self.spec.key, OUT_KEY: str(self.out_dir.parent)}

    def run(self, on_round: Callable[[dict], None] | None = None, on_client: Callable[[], None] | None = None, faults: dict[int, str] | None = None) -> list[dict]:
        run_config = self.run_config()
        runtime_for(run_config, data=self.data)  # the nodes share this process's loaded data
        grid = LocalGrid(client_app, self.cfg.federation.num_clients, run_config, faults)
        return self.run_with_grid(grid, on_round)
