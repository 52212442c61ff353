"""`make bench`: run every performance benchmark and keep its JSON under benchmarks/results/.

    .venv/bin/python benchmarks/run_all.py [--device cpu|cuda] [--only galore,ajive,simulator]

benchmarks/RESULTS.md quotes these files; re-run this to refresh them on your machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHES = {
    "galore": ["bench_galore.py"],
    "ajive": ["bench_ajive.py"],
    "simulator": ["bench_simulator.py"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--only", default=",".join(BENCHES))
    args = parser.parse_args()
    (HERE / "results").mkdir(exist_ok=True)
    failed = []
    for name in args.only.split(","):
        out = HERE / "results" / f"{name}-{args.device}.json"
        command = [sys.executable, str(HERE / BENCHES[name][0]), "--device", args.device, "--out", str(out)]
        print("+", " ".join(command), flush=True)
        if subprocess.run(command).returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
