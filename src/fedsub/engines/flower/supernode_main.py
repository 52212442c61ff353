"""`python -m fedsub.engines.flower.supernode_main CAP ARGS...`: flower-supernode with its waits capped.

flwr 1.41's SuperNode sleeps a hard-coded 3 s whenever the SuperLink has no message for it and polls
for its ClientApp's reply every 0.5 s (flwr/supernode/start_client_internal.py:263 and :470, both
`time.sleep` on that module's `time`). A round of a warm node then waits up to 3 s for its message
before any work starts. `fedsub flower node --superlink-poll CAP` starts the SuperNode through this
module, which gives that one module a `time` whose sleep is at most CAP seconds; everything else is
flwr's own code. The cost is one PullMessages request to the SuperLink every CAP seconds per idle
node (2 per second at 0.5 s; stock: one per 3 s). flwr is pinned exactly (==1.41.0) because this
reaches into a private module; tests/engines/test_flower_worker.py checks the sleeps are still there.
"""

from __future__ import annotations

import sys
import time
import types

import flwr.supernode.start_client_internal as supernode_loop
from flwr.supernode.cli import flower_supernode

PATCHED_MODULE = supernode_loop.__name__


def capped_time(cap: float) -> types.ModuleType:
    """A stand-in for the `time` module whose sleep() never waits longer than `cap` seconds."""
    proxy = types.ModuleType("time")
    proxy.__dict__.update(vars(time))
    proxy.sleep = lambda seconds: time.sleep(min(seconds, cap))
    return proxy


def cap_supernode_sleeps(cap: float) -> None:
    """Give the SuperNode's loop module a `time` whose sleep is capped (its functions look `time` up
    when they run, so this works after the import)."""
    if getattr(supernode_loop, "time", None) is not time:
        raise RuntimeError(f"{PATCHED_MODULE} no longer uses the time module; flwr changed, unpin with care")
    supernode_loop.time = capped_time(cap)


def main() -> None:
    cap = float(sys.argv[1])
    sys.argv = ["flower-supernode", *sys.argv[2:]]
    cap_supernode_sleeps(cap)
    flower_supernode()


if __name__ == "__main__":
    main()
