"""Command line: `fedsub run`, `fedsub methods`. Bad input exits 2 with one line, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from fedsub.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsub", description="Federated fine-tuning under non-IID data.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment config (every method it lists)")
    run.add_argument("config", help="YAML experiment config (see configs/)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. train.lr=1e-4 (repeatable)")
    run.add_argument("--out", type=Path, help="run directory (default runs/<name>-<time>)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    sub.add_parser("methods", help="list the registered methods and their options")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from fedsub.config import load_config
    from fedsub.run import run_experiment

    cfg = load_config(args.config, args.overrides)
    out = args.out or Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_experiment(cfg, out, quiet=args.quiet, overwrite=args.overwrite)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from fedsub.core.registry import available_methods

    for name, cls in available_methods().items():
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        print(f"{name:18s} {doc}")
        for field, info in cls.Options.model_fields.items():
            default = info.get_default(call_default_factory=True)
            print(f"    {field} = {default!r}  {info.description or ''}".rstrip())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own progress bars say what is happening; the libraries' per-file bars are noise on stderr.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets

    datasets.disable_progress_bars()
    handler = {"run": cmd_run, "methods": cmd_methods}[args.command]
    try:
        return handler(args)
    except ConfigError as err:
        print(f"fedsub: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedsub: interrupted; finished rounds are in metrics.jsonl", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
