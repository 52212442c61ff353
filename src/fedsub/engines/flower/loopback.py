"""A SuperLink and N SuperNodes on 127.0.0.1, for the slow test and the benchmark.

The same commands the README documents, started as process groups with their own HOME / FLWR_HOME
and FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 (offline: the apps use this environment), and
torn down in `close()` with every descendant (flwr 1.41 starts its SuperExec processes detached,
in their own sessions, so killing the process group alone would leave them running).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Loopback:
    """`with Loopback(workdir, nodes=2) as link:` -> link.address is the SuperLink's host:port.

    `warm` (default) starts each node as `fedsub flower node` (a SuperNode in process isolation and a
    warm worker: one ClientApp process for all its messages); `warm=False` as a stock
    `flower-supernode` (a fresh ClientApp process per message)."""

    def __init__(
        self, workdir: Path, nodes: int = 2, start_timeout: float = 90.0, warm: bool = True,
        node_configs: dict[int, str] | None = None,
    ):  # fmt: skip
        """`node_configs[k]`: more --node-config for node k, e.g. 'data="/srv/site1/train.jsonl"'."""
        self.workdir = Path(workdir)
        self.nodes, self.start_timeout, self.warm = nodes, start_timeout, warm
        self.node_configs = node_configs or {}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen] = []
        bin_dir = str(Path(sys.executable).parent)
        home = self.workdir / "home"
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),  # the SuperLink starts flower-superexec by name
            "HOME": str(home),
            "FLWR_HOME": str(home / ".flwr"),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "w")
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir, start_new_session=True
        )
        log.close()
        self.processes.append(process)
        return process

    def __enter__(self) -> "Loopback":
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            link = self.start(
                "superlink", ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(self.port)]
            )
            wait_for_port(self.port, self.start_timeout, link)
            for k in range(self.nodes):
                self.start(f"supernode{k}", self.node_command(k))
        except BaseException:
            self.close()
            raise
        return self

    def node_command(self, k: int) -> list[str]:
        flower_args = ["--insecure", "--superlink", self.address]
        node_config = f"partition-id={k} num-partitions={self.nodes} {self.node_configs.get(k, '')}".strip()
        flower_args += ["--node-config", node_config]
        if self.warm:
            fedsub = [sys.executable, "-m", "fedsub.app.cli", "flower", "node", "--runtime-port", str(free_port())]
            return [*fedsub, "--", *flower_args]
        return ["flower-supernode", *flower_args, "--host", "127.0.0.1", "--port", str(free_port())]

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """SIGTERM every started process and all its descendants, SIGKILL what is left after 10 s."""
        victims: list[psutil.Process] = []
        for process in self.processes:
            try:
                root = psutil.Process(process.pid)
                victims += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        for victim in victims:
            try:
                victim.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(victims, timeout=10)
        for victim in alive:
            try:
                victim.kill()
            except psutil.NoSuchProcess:
                pass
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.processes.clear()

    def logs(self) -> str:
        """The tail of every log, for a failing test's message."""
        return "\n".join(f"--- {p.name}\n" + p.read_text()[-2000:] for p in sorted(self.workdir.glob("*.log")))
