"""`fedsub flower node`: a SuperNode whose ClientApp stays warm between messages.

It starts `flower-supernode --isolation process` (the user's flags passed through) and one warm
worker (fedsub.engines.flower.worker) claiming the node's tasks on its Runtime API, then watches both:
a worker that dies (a crash, the OOM killer) is restarted at once, at most `max_restarts` times in a
row without a task in between, and logged; the task it was running is failed by the SuperNode after
its heartbeat timeout and the server records that client as dropped. When the SuperNode exits the
node exits with its code; SIGTERM / SIGINT stop both.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from fedsub.engines.flower.deploy import warn_if_insecure_remote
from fedsub.engines.flower.loopback import wait_for_port
from fedsub.errors import ConfigError

STARTUP_SECONDS = 120.0  # for the SuperNode's Runtime API to listen
OWNED_FLAGS = ("--isolation", "--host", "--port")  # the node sets these: its worker must find the Runtime API
log = logging.getLogger("fedsub.node")


def supernode_command(flower_args: list[str], runtime_port: int, superlink_poll: float | None = None) -> list[str]:
    """flower-supernode in process isolation; with `superlink_poll`, its idle wait capped (supernode_main)."""
    for arg in flower_args:
        if arg.split("=")[0] in OWNED_FLAGS:
            raise ConfigError(
                f"fedsub flower node: {arg.split('=')[0]} is set by the node (--isolation process, the Runtime API on "
                f"127.0.0.1:--runtime-port); leave it out of the flower-supernode arguments"
            )
    if superlink_poll is not None:
        binary = [sys.executable, "-m", "fedsub.engines.flower.supernode_main", str(superlink_poll)]
    else:
        executable = Path(sys.executable).with_name("flower-supernode")
        binary = [str(executable) if executable.is_file() else "flower-supernode"]
    return [*binary, *flower_args, "--isolation", "process", "--host", "127.0.0.1", "--port", str(runtime_port)]


def worker_command(runtime_port: int, poll: float, auth_secret_file: Path | None) -> list[str]:
    command = [sys.executable, "-m", "fedsub.app.cli", "flower", "worker", "--runtime", f"127.0.0.1:{runtime_port}"]
    command += ["--poll", str(poll)]
    if auth_secret_file:
        command += ["--auth-secret-file", str(auth_secret_file)]
    return command


def run_node(
    flower_args: list[str],
    runtime_port: int = 9094,
    poll: float = 0.1,
    auth_secret_file: Path | None = None,
    max_restarts: int = 5,
    superlink_poll: float | None = 0.5,
) -> int:
    """Run the SuperNode and its warm worker until the SuperNode ends; the SuperNode's exit code."""
    if auth_secret_file:
        if not auth_secret_file.is_file():
            raise ConfigError(f"fedsub flower node: --auth-secret-file {auth_secret_file} not found")
        flower_args = [*flower_args, "--superexec-auth-secret-file", str(auth_secret_file)]
    if "--insecure" in flower_args and "--superlink" in flower_args[:-1]:
        warn_if_insecure_remote(flower_args[flower_args.index("--superlink") + 1], True)
    supernode = subprocess.Popen(supernode_command(flower_args, runtime_port, superlink_poll))
    try:  # the worker starts once the Runtime API listens, so a slow SuperNode start costs no restarts
        wait_for_port(runtime_port, STARTUP_SECONDS, supernode)
    except (RuntimeError, TimeoutError) as err:
        supernode.terminate()
        print(f"fedsub flower node: the SuperNode did not start: {err}", file=sys.stderr)
        return supernode.wait() or 1
    worker, restarts = None, 0
    stopping = False

    def stop(signum, frame):  # noqa: ARG001 (signal handler signature)
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping and supernode.poll() is None:
            if worker is None or worker.poll() is not None:
                if worker is not None:
                    restarts += 1
                    print(
                        f"fedsub flower node: worker exited with code {worker.returncode}; "
                        f"restart {restarts} of {max_restarts}",
                        file=sys.stderr,
                        flush=True,
                    )
                    if restarts > max_restarts:
                        print("fedsub flower node: the worker keeps dying; stopping the node", file=sys.stderr)
                        return 1
                worker = subprocess.Popen(worker_command(runtime_port, poll, auth_secret_file))
                started = time.monotonic()
            elif restarts and time.monotonic() - started > 60:
                restarts = 0  # a minute alive: count crashes afresh
            time.sleep(0.5)
        return supernode.returncode if supernode.returncode is not None else 0
    finally:
        for process in (worker, supernode):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (worker, supernode):
            if process is not None:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_worker(runtime: str, poll: float, auth_secret_file: Path | None, runtime_ca: Path | None) -> int:
    """`fedsub flower worker`: claim and run the node's tasks until SIGTERM / SIGINT."""
    from fedsub.engines.flower.worker import WorkerOptions, serve  # late: imports flwr (optional)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s fedsub worker %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise (10 a second idle)
    for path, flag in ((auth_secret_file, "--auth-secret-file"), (runtime_ca, "--runtime-ca")):
        if path and not path.is_file():
            raise ConfigError(f"fedsub flower worker: {flag} {path} not found")
    options = WorkerOptions(
        runtime_address=runtime,
        insecure=runtime_ca is None,
        root_certificates=runtime_ca.read_bytes() if runtime_ca else None,
        auth_secret=auth_secret_file.read_bytes() if auth_secret_file else None,  # raw bytes, as flwr reads it
        poll_seconds=poll,
    )
    stopped = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: stopped.set())
    print(
        f"fedsub flower worker: serving ClientApp tasks of {runtime} (pid {os.getpid()})", file=sys.stderr, flush=True
    )
    serve(options, stopped)
    return 0
