"""The warm worker's pieces that need no SuperLink: which apps it runs, the SuperNode it starts, the
capped SuperNode waits and what they reach into in flwr. The whole path (2 warm nodes, 2 runs, a
killed worker) is tests/engines/test_flower_deployment.py."""

from __future__ import annotations

import inspect
import io
import time
import zipfile

import pytest

pytest.importorskip("flwr")

import tomli_w  # noqa: E402

from fedsub.app.cli import main  # noqa: E402
from fedsub.engines.flower import supernode_main  # noqa: E402
from fedsub.engines.flower.deploy import write_app  # noqa: E402
from fedsub.engines.flower.node import supernode_command, worker_command  # noqa: E402
from fedsub.engines.flower.worker import FEDSUB_CLIENTAPP, phases, refuse_foreign_app  # noqa: E402
from fedsub.errors import ConfigError  # noqa: E402


def fab_with(pyproject: bytes | None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as fab:
        if pyproject is not None:
            fab.writestr("pyproject.toml", pyproject)
        fab.writestr("README.md", "x")
    return buffer.getvalue()


def test_the_worker_runs_the_app_fedsub_run_writes_and_refuses_others(tmp_path):
    ours = write_app(tmp_path / "app", {"fedsub-config": "x"}) / "pyproject.toml"
    refuse_foreign_app(fab_with(ours.read_bytes()))  # fedsub run's own app: accepted
    theirs = {"tool": {"flwr": {"app": {"components": {"clientapp": "evil.app:client_app"}}}}}
    with pytest.raises(ValueError, match=r"runs only fedsub.engines.flower.apps:client_app, not 'evil.app:client_app'"):
        refuse_foreign_app(fab_with(tomli_w.dumps(theirs).encode()))
    for broken in (fab_with(None), fab_with(b"[tool"), b"not a zip"):
        with pytest.raises(ValueError, match="no readable clientapp component"):
            refuse_foreign_app(broken)
    assert FEDSUB_CLIENTAPP == "fedsub.engines.flower.apps:client_app"


def test_the_node_owns_isolation_and_the_runtime_address():
    command = supernode_command(["--insecure", "--superlink", "127.0.0.1:9092"], 9200)
    assert command[-6:] == ["--isolation", "process", "--host", "127.0.0.1", "--port", "9200"]
    assert command[0].endswith("flower-supernode")
    capped = supernode_command(["--insecure"], 9200, superlink_poll=0.5)
    assert capped[1:4] == ["-m", "fedsub.engines.flower.supernode_main", "0.5"]
    for flag in ("--isolation", "--port=1", "--host"):
        with pytest.raises(ConfigError, match=f"{flag.split('=')[0]} is set by the node"):
            supernode_command(["--insecure", flag, "x"], 9200)
    assert worker_command(9200, 0.1, None)[-4:] == ["--runtime", "127.0.0.1:9200", "--poll", "0.1"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["flower", "node"], "give flower-supernode's arguments after --"),
        (["flower", "node", "--", "--insecure", "--isolation", "subprocess"], "--isolation is set by the node"),
        (["flower", "node", "--poll", "0", "--", "--insecure"], "--poll must be > 0"),
        (["flower", "node", "--superlink-poll", "-1", "--", "--insecure"], "--superlink-poll must be >= 0"),
        (["flower", "node", "--auth-secret-file", "/nonexistent/s", "--", "--insecure"], "/nonexistent/s not found"),
        (["flower", "worker", "--runtime-ca", "/nonexistent/ca.crt"], "--runtime-ca /nonexistent/ca.crt not found"),
    ],
)
def test_bad_node_arguments_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_capped_sleep_waits_at_most_the_cap():
    capped = supernode_main.capped_time(0.05)
    tic = time.perf_counter()
    capped.sleep(3)
    assert time.perf_counter() - tic < 1.0
    assert capped.monotonic is time.monotonic and capped.perf_counter is time.perf_counter


def test_the_supernode_waits_it_caps_are_still_where_the_patch_reaches():
    """flwr is pinned exactly; if a release moves these sleeps, this fails before a deployment slows down."""
    import flwr
    import flwr.supernode.start_client_internal as module

    assert flwr.__version__ == "1.41.0"
    source = inspect.getsource(module)
    assert module.time is time and "time.sleep(3)" in source and "time.sleep(0.5)" in source


def test_phases_are_each_steps_own_seconds():
    assert phases({"start": 1.0, "pulled": 1.25, "ran": 3.25, "pushed": 3.5}) == "pulled 0.25s, ran 2.00s, pushed 0.25s"
