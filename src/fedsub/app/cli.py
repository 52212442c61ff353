"""Command line: `fedsub run|compare|report|export|methods`. Bad input exits 2 with one line, never a traceback.

Each command imports what it needs when it runs (the late imports below, for start-up time): the
engines and models cost seconds to import (torch, transformers, peft), which `fedsub report`,
`fedsub methods` and `--help` do not need.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from fedsub.app.console import make_console
from fedsub.config import apply_override, check_method_options, load_config, validate_config
from fedsub.core.registry import available_methods
from fedsub.errors import ConfigError
from fedsub.reporting.tblog import check_tensorboard


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsub", description="Federated fine-tuning under non-IID data.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment config (every method it lists)")
    run.add_argument(
        "config", nargs="?", help="YAML experiment config (see configs/); with --resume: default DIR/config.yaml"
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. train.lr=1e-4 (repeatable)",
    )
    run.add_argument("--out", type=Path, help="run directory (default runs/<name>-<time>)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the run in DIR from its checkpoints (finished methods are kept)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument(
        "--tensorboard", action="store_true", help="also write TensorBoard events to <run>/<method>/tensorboard/"
    )
    add_grid_commands(sub)
    sub.add_parser("methods", help="list the registered methods and their options")
    flower = sub.add_parser("flower", help="Flower deployment helpers (engine: flower)")
    flower_sub = flower.add_subparsers(dest="flower_command", required=True)
    certs = flower_sub.add_parser("certs", help="TLS certificates and SuperNode keys for a loopback deployment")
    certs.add_argument("out", type=Path, help="folder to write ca.crt, server.pem, server.key, nodeK, nodeK.pub")
    certs.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs to create (default 2)")
    node = flower_sub.add_parser(
        "node",
        help="a SuperNode whose ClientApp stays warm: flower-supernode --isolation process + a fedsub worker",
        description="Starts flower-supernode with the arguments after -- (plus --isolation process and its Runtime "
        "API on 127.0.0.1:--runtime-port) and a warm fedsub worker that runs every ClientApp task in one process; "
        "a dead worker is restarted.",
    )
    node.add_argument("--runtime-port", type=int, default=9094, help="the SuperNode's Runtime API port (default 9094)")
    node.add_argument("--poll", type=float, default=0.1, help="worker's idle wait between task claims, s (default 0.1)")
    node.add_argument("--auth-secret-file", type=Path, help="shared secret signing task claims (flwr's SuperExec auth)")
    node.add_argument("--max-restarts", type=int, default=5, help="worker restarts in a row before the node stops")
    node.add_argument(
        "--superlink-poll",
        type=float,
        default=0.5,
        help="cap on the SuperNode's idle wait for messages, s (flwr's is 3; 0 keeps flwr's; default 0.5)",
    )
    node.add_argument("flower_args", nargs=argparse.REMAINDER, help="-- then flower-supernode's arguments")
    split = flower_sub.add_parser(
        "split", help="write a dataset's partition as per-site files (data.source nodes), with experiment.yaml"
    )
    split.add_argument("data", help="an experiment config (.yaml: its dataset and partition) or a dataset")
    split.add_argument("--nodes", type=int, help="sites (federation.num_clients; default: the config's)")
    split.add_argument("--out", type=Path, required=True, help="an empty folder for the site files")
    split.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. partition.alpha=0.1 (repeatable)")  # fmt: skip
    worker = flower_sub.add_parser("worker", help="the warm worker alone, for a SuperNode started --isolation process")
    worker.add_argument("--runtime", default="127.0.0.1:9094", help="the SuperNode's Runtime API host:port")
    worker.add_argument("--runtime-ca", type=Path, help="CA certificate of a TLS Runtime API (--ssl-certfile)")
    worker.add_argument("--poll", type=float, default=0.1, help="idle wait between task claims, s (default 0.1)")
    worker.add_argument("--auth-secret-file", type=Path, help="the SuperNode's --superexec-auth-secret-file")
    return parser


def add_grid_commands(sub) -> None:
    """`fedsub compare`, `fedsub report`, `fedsub export`.

    (fedsub.app.compare, fedsub.reporting.results, fedsub.app.export)
    """
    compare = sub.add_parser("compare", help="run methods x alphas x seeds (resumable), then tables and plots")
    compare.add_argument("config", help="YAML experiment config listing the methods")
    compare.add_argument("--methods", help="comma-separated method keys of the config (label or name; default: all)")
    compare.add_argument(
        "--alphas", help="comma-separated partition.alpha values, e.g. 0.1,0.5 (default: the config's)"
    )
    compare.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default: the config's)")
    compare.add_argument(
        "--out", type=Path, help="grid directory (default runs/<name>-compare); finished cells there are kept"
    )
    compare.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable)",
    )
    compare.add_argument("--quiet", action="store_true", help="no progress output")
    compare.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events per method")
    report = sub.add_parser("report", help="rebuild results.csv, results.md and plots from compare or run directories")
    report.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="fedsub compare or run directories")
    report.add_argument("--out", type=Path, help="where to write (default: the DIR, when only one is given)")
    export = sub.add_parser(
        "export", help="the global model of a finished method as a PEFT adapter or a merged HF model"
    )
    export.add_argument("run_dir", type=Path, help="a fedsub run directory (or a compare cell alpha-A/seed-S)")
    export.add_argument("--method", help="method key (needed when the run holds several)")
    export.add_argument(
        "--format", required=True, choices=["peft", "merged"], help="peft: LoRA methods only; merged: every method"
    )
    export.add_argument("--out", type=Path, required=True, help="folder to write (must be new or empty)")


def load_experiment(path: str | Path, overrides: list[str]):
    """The config, its methods' options checked too: a bad one fails here, before any data is read."""
    return check_method_options(load_config(path, overrides), source=str(path))


def quiet_datasets() -> None:
    """Our own progress bars say what is happening; the datasets library's per-file bars are noise
    on stderr, and a bad data file gets our one-line error, not its log too. For the commands that
    read data only: datasets takes ~1.2 s to import here."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets  # late: start-up, see the docstring

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)


def cmd_run(args: argparse.Namespace) -> int:
    from fedsub.app.run import run_experiment  # late: start-up, see the module docstring

    quiet_datasets()
    if args.resume is not None:
        return resume_run(args)
    if args.config is None:
        raise ConfigError("run: pass a YAML config (see configs/), or --resume DIR to continue a run")
    cfg = load_experiment(args.config, args.overrides)
    out = args.out or Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_tensorboard_flag(args)
    run_experiment(cfg, out, quiet=args.quiet, overwrite=args.overwrite, tensorboard=args.tensorboard)
    return 0


def resume_run(args: argparse.Namespace) -> int:
    """`fedsub run --resume DIR [CONFIG]`: the run's own config unless one is given (it must match)."""
    from fedsub.app.run import resume_dir, run_experiment  # late: start-up

    if args.out is not None or args.overwrite:
        raise ConfigError("--resume DIR continues the run in DIR; drop --out / --overwrite")
    cfg = load_experiment(args.config or resume_dir(args.resume) / "config.yaml", args.overrides)
    check_tensorboard_flag(args)
    run_experiment(cfg, args.resume, quiet=args.quiet, tensorboard=args.tensorboard, resume=True)
    return 0


def check_tensorboard_flag(args: argparse.Namespace) -> None:
    if args.tensorboard:
        check_tensorboard()


def cmd_compare(args: argparse.Namespace) -> int:
    from fedsub.app.compare import parse_grid, run_grid  # late: start-up

    quiet_datasets()
    grid = parse_grid(load_experiment(args.config, args.overrides), args.methods, args.alphas, args.seeds)
    check_tensorboard_flag(args)
    run_grid(
        grid,
        args.out or Path("runs") / f"{grid.cfg.name}-compare",
        make_console(args.quiet),
        tensorboard=args.tensorboard,
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedsub.reporting.results import print_results, write_results  # late: start-up (matplotlib, numpy)

    if args.out is None and len(args.dirs) > 1:
        raise ConfigError(f"report: {len(args.dirs)} directories given; pass --out for the combined results")
    out = args.out or args.dirs[0]
    console = make_console()
    print_results(console, write_results(args.dirs, out))
    console.print(f"results.csv, results.md, accuracy_rounds.png, accuracy_bytes.png, partition_heatmaps.png in {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fedsub.app.export import export_model  # late: start-up

    out = export_model(args.run_dir, args.out, args.format, args.method)
    print(f"exported ({args.format}) to {out}", file=sys.stderr)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    for name, cls in available_methods().items():
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        print(f"{name:18s} {doc}")
        for field, info in cls.Options.model_fields.items():
            default = info.get_default(call_default_factory=True)
            print(f"    {field} = {default!r}  {info.description or ''}".rstrip())
    return 0


def cmd_flower(args: argparse.Namespace) -> int:
    from fedsub.engines.flower import require_flower  # late: start-up, and flwr is optional

    require_flower()
    if args.flower_command == "split":
        return cmd_flower_split(args)
    if args.flower_command in ("node", "worker"):
        from fedsub.engines.flower.node import run_node, run_worker  # late: needs flwr (optional)

        if args.poll <= 0:
            raise ConfigError(f"fedsub flower {args.flower_command}: --poll must be > 0 seconds, got {args.poll}")
        if args.flower_command == "worker":
            return run_worker(args.runtime, args.poll, args.auth_secret_file, args.runtime_ca)
        flower_args = args.flower_args[1:] if args.flower_args[:1] == ["--"] else args.flower_args
        if not flower_args:
            raise ConfigError(
                "fedsub flower node: give flower-supernode's arguments after --, e.g. -- --insecure "
                "--superlink 127.0.0.1:9092 --node-config 'partition-id=0'"
            )
        if args.superlink_poll < 0:
            raise ConfigError(f"fedsub flower node: --superlink-poll must be >= 0 seconds, got {args.superlink_poll}")
        cap = args.superlink_poll or None  # 0: flwr's own waits
        return run_node(flower_args, args.runtime_port, args.poll, args.auth_secret_file, args.max_restarts, cap)
    from fedsub.engines.flower.certs import write_certificates  # late: needs flwr (optional)

    paths = write_certificates(args.out, args.nodes)
    print(f"wrote {', '.join(p.name for p in paths)} to {args.out}", file=sys.stderr)
    return 0


def cmd_flower_split(args: argparse.Namespace) -> int:
    from fedsub.engines.flower.sites import write_sites  # late: loads the data stack

    overrides = list(args.overrides)
    if args.nodes is not None:
        if args.nodes < 1:
            raise ConfigError(f"--nodes must be >= 1, got {args.nodes}")
        overrides += [f"federation.num_clients={args.nodes}", f"federation.clients_per_round={args.nodes}"]
    if Path(args.data).suffix.lower() in (".yaml", ".yml"):
        cfg = load_config(args.data, overrides)
    else:
        raw: dict = {"name": "sites", "data": {"dataset": args.data}}
        for item in overrides:
            apply_override(raw, item)
        cfg = validate_config(raw, source="fedsub flower split")
    written = write_sites(cfg, args.out)
    sites = sum(1 for p in written if p.name == "train.jsonl")
    tests = " and test.jsonl" if any(p.name == "test.jsonl" for p in written) else ""
    print(
        f"wrote {sites} sites to {args.out}: site-K/train.jsonl{tests}, server-test.jsonl, experiment.yaml, "
        f"nodes.txt (each node's --node-config)",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "run": cmd_run,
        "compare": cmd_compare,
        "report": cmd_report,
        "export": cmd_export,
        "methods": cmd_methods,
        "flower": cmd_flower,
    }[args.command]
    try:
        return handler(args)
    except ConfigError as err:
        print(f"fedsub: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = (
            "run the same fedsub compare again"
            if args.command == "compare"
            else "continue with fedsub run --resume DIR"
        )
        print(f"fedsub: interrupted; {again}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `fedsub methods | head`: the reader left; say nothing more (Python's own recipe:
        # point stdout at devnull so the interpreter's final flush does not raise again)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
