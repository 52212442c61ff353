"""`engine: flower` with `flower.superlink`: submit one Flower run per method, follow it, collect it.

For each method `fedsub run` writes a throw-away Flower App (a pyproject.toml whose components are
`fedsub.engines.flower.apps:server_app` / `client_app` and whose run config carries the resolved
config, the method key and the run directory), submits it with `flwr run`, then follows
`<run dir>/<method>/metrics.jsonl` as the ServerApp writes it and the run's status (`flwr ls`;
`flwr run --stream` exits 0 even when the run failed, so the status is what counts). The ServerApp runs
on the SuperLink's machine and writes into the run directory there: on loopback that is this machine.
The Flower CLI's connection file lives in a temporary FLWR_HOME, so the user's ~/.flwr is untouched.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import tomli_w

from fedsub.config import ExperimentConfig, MethodSpec
from fedsub.core.checkpoint import checkpoint_clients_on_nodes, checkpoint_round
from fedsub.engines.flower.client import CONFIG_KEY, METHOD_KEY, OUT_KEY, RESUME_KEY
from fedsub.engines.flower.server import refuse_node_state, run_config_text
from fedsub.errors import ConfigError

CONNECTION = "fedsub"
POLL_SECONDS = 1.0
STATUS_SECONDS = 10.0


class FlowerRunFailed(ConfigError):
    """A submitted Flower run ended without success (one line: the run id, its status, what to run)."""


def flwr_executable() -> str:
    """The `flwr` CLI of this environment (next to this Python), else the one on PATH."""
    local = Path(sys.executable).with_name("flwr")
    found = str(local) if local.is_file() else shutil.which("flwr")
    if not found:
        raise ConfigError("field engine: the Flower CLI `flwr` is not installed; pip install 'fedsub[flower]'")
    return found


def write_app(app_dir: Path, run_config: dict[str, str | bool]) -> Path:
    """A minimal Flower App whose components are fedsub's (imported from this environment)."""
    app_dir.mkdir(parents=True, exist_ok=True)
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": "fedsub-run",
            "version": "1.0.0",
            "description": "a fedsub method run",
            "license": "Apache-2.0",
            "dependencies": ["flwr==1.41.0"],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedsub",
                    "components": {
                        "serverapp": "fedsub.engines.flower.apps:server_app",
                        "clientapp": "fedsub.engines.flower.apps:client_app",
                    },
                    "config": run_config,
                }
            }
        },
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(project))
    return app_dir


def write_connection(home: Path, cfg: ExperimentConfig) -> Path:
    """FLWR_HOME/config.toml with one SuperLink connection, from the `flower` config section."""
    fl = cfg.flower
    connection: dict[str, object] = {"address": fl.superlink}
    if fl.insecure:
        connection["insecure"] = True
    else:
        certificate = Path(fl.root_certificates).expanduser().resolve()
        if not certificate.is_file():
            raise ConfigError(
                f"field flower.root_certificates: {certificate} not found; give the CA certificate (PEM) the "
                f"SuperLink's certificate is signed by"
            )
        connection["root-certificates"] = str(certificate)
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}}))
    return home


def flwr_json(args: list[str], home: Path, timeout: float = 120) -> dict:
    """Run a `flwr` command with --format json; its JSON reply (errors included) as a dict."""
    env = {**os.environ, "FLWR_HOME": str(home)}
    done = subprocess.run(
        [flwr_executable(), *args, "--format", "json"], capture_output=True, text=True, env=env, timeout=timeout
    )
    start = done.stdout.find("{")
    try:
        return (
            json.loads(done.stdout[start:])
            if start >= 0
            else {"success": False, "error-message": done.stderr.strip()[-300:]}
        )
    except json.JSONDecodeError:
        return {"success": False, "error-message": done.stdout.strip()[-300:]}


def one_line(text: str) -> str:
    return " ".join(str(text).split())[:300]


class FlowerDeployment:
    """One method's run on a SuperLink; `run()` returns its records like the simulator's.

    With `resume` the ServerApp continues from its checkpoint in the method directory (refused here,
    before submitting, when that checkpoint left client state on the nodes: a new run starts them empty)."""

    def __init__(self, cfg: ExperimentConfig, spec: MethodSpec, method_dir: Path, resume: bool = False):
        self.cfg, self.spec, self.method_dir, self.resume = cfg, spec, Path(method_dir).resolve(), resume
        self.checkpoint_dir = self.method_dir / "checkpoint"  # written by the ServerApp (on loopback: this machine)
        self.run_id: int | None = None

    def run(
        self, on_round: Callable[[dict], None] | None = None, on_client: Callable[[], None] | None = None
    ) -> list[dict]:
        done = 0
        if self.resume:
            refuse_node_state(checkpoint_clients_on_nodes(self.checkpoint_dir), self.checkpoint_dir, self.spec.key)
            done = checkpoint_round(self.checkpoint_dir)
        run_config = {
            CONFIG_KEY: run_config_text(self.cfg),
            METHOD_KEY: self.spec.key,
            OUT_KEY: str(self.method_dir.parent),
            RESUME_KEY: self.resume,
        }
        warn_if_insecure_remote(self.cfg.flower.superlink, self.cfg.flower.insecure)
        with tempfile.TemporaryDirectory(prefix="fedsub-flower-") as scratch:
            home = write_connection(Path(scratch) / "flwr-home", self.cfg)
            app = write_app(Path(scratch) / "app", run_config)
            self.run_id = self.submit(app, home)
            self.follow(home, on_round, seen=done)
        return read_records(self.method_dir / "metrics.jsonl")

    def save_final_model(self, label_names: list[str]) -> None:
        pass  # the ServerApp saved final_model.safetensors itself, where it ran

    def submit(self, app: Path, home: Path) -> int:
        reply = flwr_json(["run", str(app), CONNECTION], home)
        if not reply.get("success"):
            raise FlowerRunFailed(
                f"field flower.superlink: submitting to {self.cfg.flower.superlink} failed: "
                f"{one_line(reply.get('error-message', reply))}"
            )
        return int(reply["run-id"])

    def follow(self, home: Path, on_round: Callable[[dict], None] | None, seen: int = 0) -> None:
        """Report rounds as metrics.jsonl grows past `seen` lines (checked every POLL_SECONDS), until
        the run's status is finished. Each status check starts a `flwr` process (~1 s of CPU), so it
        runs only every STATUS_SECONDS, and at once when the last round is in."""
        deadline = time.monotonic() + (self.cfg.flower.run_timeout or float("inf"))
        next_status, status = 0.0, "unknown"
        while True:
            records = read_records(self.method_dir / "metrics.jsonl")
            for record in records[seen:]:
                if on_round:
                    on_round(record)
            seen = len(records)
            if time.monotonic() >= next_status or seen >= self.cfg.federation.rounds:
                status, next_status = self.status(home), time.monotonic() + STATUS_SECONDS
                if status.startswith("finished"):
                    break
            if time.monotonic() > deadline:
                flwr_json(["stop", str(self.run_id), CONNECTION], home)
                raise FlowerRunFailed(
                    f"flower run {self.run_id} ran past flower.run_timeout={self.cfg.flower.run_timeout}s; stopped"
                )
            time.sleep(POLL_SECONDS)
        if status != "finished:completed":
            raise FlowerRunFailed(
                f"flower run {self.run_id} ended {status}; see `flwr log {self.run_id}` on the SuperLink connection"
            )

    def status(self, home: Path) -> str:
        reply = flwr_json(["ls", "--run-id", str(self.run_id), CONNECTION], home)
        runs = reply.get("runs") or []
        return str(runs[0].get("status", "unknown")) if runs else "unknown"


def is_loopback(address: str) -> bool:
    """Whether host:port (or [v6]:port) names this machine: 127.0.0.0/8, ::1 or localhost."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_insecure_remote(address: str | None, insecure: bool) -> bool:
    """Plain HTTP to another machine sends every model update readable to the network: say so."""
    if not (insecure and address and not is_loopback(address)):
        return False
    print(
        f"fedsub: warning: flower.insecure sends the models in plain text to {address}, which is not this machine; "
        f"use TLS (flower.root_certificates) outside local tests",
        file=sys.stderr,
    )
    return True


def read_records(path: Path) -> list[dict]:
    """Complete lines only: the ServerApp may be writing the next one."""
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")[:-1]  # the last element is "" or a partial line
    return [json.loads(line) for line in lines if line.strip()]
