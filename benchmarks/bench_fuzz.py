"""Benchmark-sized reply fuzzing (issue 19 point 2): 10,000 hypothesis-generated mutations of an
honest Flower reply through record decoding and the server's screening, with the count of accepted
and rejected replies and the rejection reasons by kind. The mutations and the harness are the CI
test's own (tests/engines/test_reply_fuzz.py, 500 examples there).

    .venv/bin/python benchmarks/bench_fuzz.py [--examples 10000] [--out benchmarks/results/fuzz-cpu.json]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import time
from pathlib import Path

from common import emit, machine_info

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1] / "tests"),
    str(Path(__file__).resolve().parents[1] / "tests" / "engines"),
]

import test_reply_fuzz as harness  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fedsub.engines.failures import screen_outcomes  # noqa: E402
from fedsub.engines.flower.server import FlowerClients  # noqa: E402
from fedsub.engines.rounds import TRAIN, Exchange  # noqa: E402


def kind_of(reason: str) -> str:
    """A rejection reason without its numbers and names: its kind."""
    head = ":".join(reason.split(":")[:2]) if reason.startswith("malformed") else reason
    return re.sub(r"'[^']*'|\d[\d.e+-]*", "_", head)[:60]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    counts, reasons, escaped = collections.Counter(), collections.Counter(), []

    @settings(max_examples=args.examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(mutations=st.lists(harness.mutation, min_size=1, max_size=3))
    def run(mutations):
        message = harness.honest_reply()
        for kind, key, value in mutations:
            try:
                harness.mutate(message, kind, key, value)
            except Exception:
                counts["mutation impossible"] += 1
        clients = FlowerClients(grid=None, cfg=harness.tiny_config(engine="flower"), method_key="fedit")
        try:
            outcome = clients.received(message, 0, Exchange(0, TRAIN, {0: harness.SENT}, {0: None}), elapsed=1.0)
            accepted, dropped, rejected = screen_outcomes(
                [outcome], {0: harness.SENT}, lambda c, p: harness.SPEC, None, lambda c: harness.ROWS
            )
            harness.assert_sound(accepted)
        except Exception as err:  # counted, not raised: the benchmark reports every escape
            escaped.append(f"{type(err).__name__}: {err}"[:200])
            return
        counts["accepted" if accepted else "rejected"] += 1
        for entry in rejected + dropped:
            reasons[kind_of(entry["reason"])] += 1

    tic = time.perf_counter()
    run()
    result = {
        "benchmark": "reply_fuzz",
        "machine": machine_info("cpu", "float32"),
        "examples": args.examples,
        "seconds": time.perf_counter() - tic,
        "accepted": counts["accepted"],
        "rejected": counts["rejected"],
        "escaped": len(escaped),
        "escapes": escaped[:10],
        "rejection_kinds": dict(reasons.most_common(15)),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
