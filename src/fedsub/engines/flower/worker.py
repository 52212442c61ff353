"""A warm ClientApp worker: one long-lived process per SuperNode that runs every task of fedsub runs
in-process, so the model, data and method are built once per run config, not once per message.

Why it exists (flwr 1.41.0's source, paths under site-packages/flwr/): stock `flwr-clientapp` serves
one task and exits (supernode/runtime/run_clientapp.py: one `client_app(...)` call, then
`flwr_exit`), and flower-superexec's SubprocessExecutor starts one per task
(supercore/superexec/executor/subprocess_executor.py), in both isolation modes. With
`flower-supernode --isolation process` the SuperNode starts no executor and serves its Runtime API
(`--host/--port`, default 127.0.0.1:9094) to whoever claims tasks there: this worker claims
`flwr-clientapp` tasks (AcquireTask, as run_superexec.py does) and runs each one the way
run_clientapp.py does (pull the message and Context with the task's single-use token, call the
ClientApp, push the reply, push the Context back), except that the ClientApp is fedsub's own,
imported once, and the process stays. Per-client state still comes from the task's Context
(`context.state`), so a restarted worker gives the same results; only the caches are lost.

The cache (fedsub.engines.flower.client.runtime_for) keeps one (config, method) runtime: a second run
of the same config and method reuses the model; another run config frees it first.

Risks, handled: this uses flwr modules that are not public API (pinned: flwr==1.41.0 exactly in
pyproject; tests/engines/test_flower_worker.py and the slow deployment test run it). flwr's own
HeartbeatSender raises SIGINT in its process when the SuperNode refuses a heartbeat, which would end
a long-lived worker, so the worker sends its own heartbeats and only logs a refusal. A task whose
app is not fedsub's is refused (pushed back as failed), since the worker never installs a FAB.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import tomllib
import zipfile
from dataclasses import dataclass

from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest, SendTaskHeartbeatRequest  # noqa: E402
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

CLIENTAPP_TASK = "flwr-clientapp"  # flwr.supercore.constant.TaskType.CLIENT_APP
FEDSUB_CLIENTAPP = "fedsub.engines.flower.apps:client_app"
HEARTBEAT_SECONDS = 15.0  # the SuperNode fails a running task 60 s after its last heartbeat
log = logging.getLogger("fedsub.worker")


@dataclass(frozen=True)
class WorkerOptions:
    runtime_address: str = "127.0.0.1:9094"  # the SuperNode's Runtime API (--host/--port)
    insecure: bool = True  # the Runtime API is plain HTTP unless the SuperNode got --ssl-certfile
    root_certificates: bytes | None = None  # CA of the Runtime API's certificate (with --ssl-certfile)
    auth_secret: bytes | None = None  # the SuperNode's --superexec-auth-secret-file contents
    poll_seconds: float = 0.1  # idle wait between AcquireTask calls (flower-superexec: 1 s)


def runtime_client(options: WorkerOptions, token: str | None = None) -> RuntimeHttpClient:
    """An HTTP client of the Runtime API: the claimer's (signed when a secret is set) or one task's."""
    interceptors = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp" if token else "SuperExec")]
    if token:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    elif options.auth_secret:
        interceptors.append(
            SuperExecAuthHttpInterceptor(
                master_secret=options.auth_secret, protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"})
            )
        )
    return RuntimeHttpClient.from_server_address(
        server_address=options.runtime_address,
        insecure=options.insecure,
        root_certificates=options.root_certificates,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


def serve(options: WorkerOptions, stop: threading.Event | None = None, max_tasks: int | None = None) -> int:
    """Claim and run tasks until `stop` is set (or `max_tasks` ran); returns the number run."""
    stop = stop or threading.Event()
    claimer = runtime_client(options)
    served = 0
    try:
        while not stop.is_set() and (max_tasks is None or served < max_tasks):
            reply = claimer.AcquireTask(AcquireTaskRequest(supported_task_types=[CLIENTAPP_TASK]))
            if reply.HasField("task") and reply.token:
                run_task(options, reply.token, reply.task.task_id)
                served += 1
            else:
                stop.wait(options.poll_seconds)
    finally:
        claimer.close()
    return served


def run_task(options: WorkerOptions, token: str, task_id: int) -> None:
    """One task, as flwr-clientapp runs it, in this process. Never raises for the task's own failure:
    the ClientApp's error goes back as the reply (the server records it in `dropped`)."""
    client = runtime_client(options, token)
    beat = Heartbeat(client, task_id)
    message: Message | None = None
    context: Context | None = None
    status, details = SubStatus.FAILED, "fedsub worker: task failed"
    clock = {"start": time.perf_counter()}
    try:
        beat.start()
        message, context, run, fab = pull_task_input(client)
        clock["pulled"] = time.perf_counter()
        refuse_foreign_app(fab.content)
        from fedsub.engines.flower.apps import client_app  # late: torch & co. load once, on the first task

        reply = client_app(message=message, context=context)
        clock["ran"] = time.perf_counter()
        status, details = SubStatus.COMPLETED, ""
    except Exception as err:  # the task's failure, reported to the server like flwr-clientapp does
        log.error("task %d failed: %s: %s", task_id, type(err).__name__, err)
        details = f"{type(err)}:<'{err}'>"
        reply = (
            Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
            if message
            else None
        )
    try:
        if reply is not None and context is not None:
            push_message(client, reply, context)
        push_task_output(client=client, context=context, sub_status=status, details=details)
    except Exception as err:  # the SuperNode went away mid-task: its own expiry reports the task
        log.error("task %d: pushing the result failed: %s", task_id, err)
    finally:
        beat.stop()
        client.close()
    clock["pushed"] = time.perf_counter()
    log.info("task %d (run %s) %s: %s", task_id, context.run_id if context else "?", status, phases(clock))


def phases(clock: dict[str, float]) -> str:
    """'pulled 0.12s, ran 2.01s, pushed 0.30s': each phase's seconds, for the log."""
    names, times = list(clock), list(clock.values())
    return ", ".join(f"{names[k]} {times[k] - times[k - 1]:.2f}s" for k in range(1, len(names)))


def refuse_foreign_app(fab_content: bytes) -> None:
    """The worker runs only fedsub's ClientApp (it imports it from its own environment and never
    installs the run's FAB): another app's task is failed with this reason."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab_content)) as fab:
            project = tomllib.loads(fab.read("pyproject.toml").decode())
        component = project["tool"]["flwr"]["app"]["components"]["clientapp"]
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"fedsub worker: the run's app has no readable clientapp component ({err})") from None
    if component != FEDSUB_CLIENTAPP:
        raise ValueError(f"fedsub worker: runs only {FEDSUB_CLIENTAPP}, not {component!r}; use a stock SuperNode")


class Heartbeat:
    """Task heartbeats every HEARTBEAT_SECONDS in a thread; a refusal is logged, never a signal."""

    def __init__(self, client: RuntimeHttpClient, task_id: int):
        self.client, self.task_id = client, task_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True, name=f"heartbeat-{task_id}")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    def loop(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                if not self.client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success:
                    log.warning("task %d: the SuperNode refused a heartbeat (it gave the task up)", self.task_id)
                    return
            except Exception as err:  # a transient error: the next beat tries again
                log.warning("task %d: heartbeat failed: %s", self.task_id, err)
