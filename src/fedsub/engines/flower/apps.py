"""The Flower components a Flower App points at: `server_app` and `client_app`.

The run config carries the resolved fedsub config (YAML text), the method key, the run directory and
whether to resume; the ServerApp writes `<run dir>/<method>/metrics.jsonl`, its checkpoint and
`final_model.safetensors` there, exactly as the simulator does (the driver, `fedsub run`, writes
summary.json from them).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedsub.engines.flower.client import (
    CONFIG_KEY,
    METHOD_KEY,
    OUT_KEY,
    RESUME_KEY,
    handle_evaluate,
    handle_query,
    handle_train,
    handle_warmup,
)
from fedsub.engines.flower.secagg import secagg_when_asked
from fedsub.engines.flower.server import FlowerServer, config_from_text, describe, method_spec
from fedsub.engines.setup import prepare_data

server_app = ServerApp()
client_app = ClientApp()
client_app.query()(handle_query)
client_app.train(mods=[secagg_when_asked])(handle_train)  # privacy.secagg: Flower's SecAgg+ mod
client_app.train("warmup")(handle_warmup)
client_app.evaluate()(handle_evaluate)


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Deployment entry point (runs in the SuperLink's ServerApp process)."""
    cfg = config_from_text(str(context.run_config[CONFIG_KEY]))
    spec = method_spec(cfg, str(context.run_config[METHOD_KEY]))
    method_dir = Path(str(context.run_config[OUT_KEY])) / spec.key
    with tempfile.TemporaryDirectory() as scratch:  # the driver already wrote the partition report
        data = prepare_data(cfg, Path(scratch))
    server = FlowerServer(cfg, spec, data, method_dir, resume=bool(context.run_config.get(RESUME_KEY, False)))
    server.run_with_grid(grid, on_round=lambda record: print(describe(record), flush=True))
    server.save_final_model(data.label_names)
