"""`make bench`: run every performance benchmark, keep its JSON under benchmarks/results/, and rewrite
the measured tables of benchmarks/RESULTS.md from those files (benchmarks/results_md.py).

    .venv/bin/python benchmarks/run_all.py [--device cpu|cuda] [--dtype float32|bfloat16]
        [--only galore,ajive,simulator,wordnet] [--no-run]

Results go to results/NAME-DEVICE.json (NAME-DEVICE-bfloat16.json for bf16), so a GPU run adds its
own tables next to the CPU ones. `--no-run` only rewrites RESULTS.md from the JSON already there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import results_md

HERE = Path(__file__).parent
BENCHES = {
    "galore": ["bench_galore.py"],
    "ajive": ["bench_ajive.py"],
    "simulator": ["bench_simulator.py"],
    "wordnet": ["bench_wordnet.py"],
}

CPU_FLOAT32_ONLY = {"wordnet"}  # parsing text: a device or dtype would change nothing but the file name


def result_path(name: str, device: str, dtype: str) -> Path:
    suffix = "" if dtype == "float32" else f"-{dtype}"
    return HERE / "results" / f"{name}-{device}{suffix}.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--only", default=",".join(BENCHES))
    parser.add_argument("--no-run", action="store_true", help="only rewrite RESULTS.md from benchmarks/results/")
    args = parser.parse_args()
    (HERE / "results").mkdir(exist_ok=True)
    failed = []
    for name in [] if args.no_run else args.only.split(","):
        if name in CPU_FLOAT32_ONLY and (args.device, args.dtype) != ("cpu", "float32"):
            print(f"skip {name}: it times CPU work only (run it without --device / --dtype)", flush=True)
            continue
        out = result_path(name, args.device, args.dtype)
        command = [
            sys.executable,
            str(HERE / BENCHES[name][0]),
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--out",
            str(out),
        ]
        print("+", " ".join(command), flush=True)
        if subprocess.run(command).returncode:
            failed.append(name)
    results_md.main()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
