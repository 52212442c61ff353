"""`fedsub compare`: a grid of methods x partition alphas x seeds, then tables and plots.

Layout: DIR/alpha-{a}/seed-{s}/ is an ordinary `fedsub run` directory for that alpha and seed
(`{a}` as typed: alpha-0.1), holding the selected methods. A cell (method, alpha, seed) is finished
when DIR/alpha-{a}/seed-{s}/{key}/summary.json exists: finished cells are skipped, so an interrupted
grid resumes, and a later call can add methods to a grid. Then DIR/results.csv, results.md and the
plots are rebuilt from every finished cell (what `fedsub report DIR` does without training).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from fedsub.app.console import progress_bars
from fedsub.app.run import is_finished, merge_methods, run_into
from fedsub.config import ExperimentConfig, MethodSpec, config_to_dict, load_config, validate_config
from fedsub.errors import ConfigError
from fedsub.reporting.cells import ALPHA_SCHEMES
from fedsub.reporting.results import print_results, write_results


@dataclass
class Grid:
    cfg: ExperimentConfig  # the base config, its methods reduced to the selected ones
    alphas: list[str]  # as typed; they name the cell directories
    seeds: list[int]

    def cells(self) -> list[tuple[str, int]]:
        return [(alpha, seed) for alpha in self.alphas for seed in self.seeds]

    def cell_dir(self, out: Path, alpha: str, seed: int) -> Path:
        return Path(out) / f"alpha-{alpha}" / f"seed-{seed}"

    def cell_config(self, alpha: str, seed: int) -> ExperimentConfig:
        raw = config_to_dict(self.cfg)
        raw["seed"], raw["partition"]["alpha"] = seed, float(alpha)
        return validate_config(raw, source=f"alpha {alpha} seed {seed}")


def parse_grid(cfg: ExperimentConfig, methods: str | None, alphas: str | None, seeds: str | None) -> Grid:
    specs = select_methods(cfg, methods) if methods else list(cfg.methods)
    grid_alphas = parse_alphas(alphas, cfg) if alphas else [f"{cfg.partition.alpha:g}"]
    grid_seeds = parse_list("--seeds", seeds, int, "0,1,2") if seeds else [cfg.seed]
    return Grid(cfg.model_copy(update={"methods": specs}), grid_alphas, grid_seeds)


def select_methods(cfg: ExperimentConfig, text: str) -> list[MethodSpec]:
    by_key = {m.key: m for m in cfg.methods}
    keys = parse_list("--methods", text, str, "fedit,ffa_lora")
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise ConfigError(f"--methods: unknown method key {unknown[0]!r}; the config has {', '.join(by_key)}")
    return [by_key[k] for k in keys]


def parse_alphas(text: str, cfg: ExperimentConfig) -> list[str]:
    alphas = parse_list("--alphas", text, str, "0.1,0.5")
    for alpha in alphas:
        try:
            ok = float(alpha) > 0
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"--alphas: {alpha!r} is not a positive number; give e.g. --alphas 0.1,0.5")
    if len(alphas) > 1 and cfg.partition.scheme not in ALPHA_SCHEMES:
        raise ConfigError(
            f"--alphas: partition.scheme {cfg.partition.scheme} has no alpha; give one alpha or --set "
            f"partition.scheme=dirichlet"
        )
    return alphas


def parse_list(flag: str, text: str, kind: type, example: str) -> list:
    items = [item.strip() for item in text.split(",")]
    try:
        values = [kind(item) for item in items if item]
    except ValueError:
        raise ConfigError(
            f"{flag}: {text!r} is not a comma-separated list of {kind.__name__}s; e.g. {flag} {example}"
        ) from None
    if not values or len(values) != len(items) or len(set(values)) != len(values):
        raise ConfigError(f"{flag}: {text!r} needs distinct, non-empty comma-separated values; e.g. {flag} {example}")
    return values


def run_grid(grid: Grid, out: Path, console: Console, *, tensorboard: bool = False) -> Path:
    """Run every unfinished cell of the grid into `out`, then write its results and plots."""
    out = Path(out)
    check_existing_cells(grid, out)
    keys = [m.key for m in grid.cfg.methods]
    total = len(keys) * len(grid.cells())
    done = sum(is_finished(grid.cell_dir(out, a, s), k) for a, s in grid.cells() for k in keys)
    console.print(
        f"[bold]fedsub compare[/] {grid.cfg.name}: {len(keys)} methods x alphas {grid.alphas} x seeds {grid.seeds}; "
        f"{done}/{total} cells finished"
    )
    with progress_bars(console) as progress:
        task = progress.add_task("grid", total=total, completed=done)
        for alpha, seed in grid.cells():
            cell_dir = grid.cell_dir(out, alpha, seed)
            if all(is_finished(cell_dir, k) for k in keys):
                continue
            cell_dir.mkdir(parents=True, exist_ok=True)
            console.print(f"[bold]alpha {alpha}, seed {seed}[/] -> {cell_dir}")

            def started(spec: MethodSpec, alpha: str = alpha, seed: int = seed) -> None:
                progress.update(task, description=f"grid: {spec.key} alpha {alpha} seed {seed}")

            # resume: a method killed mid-run continues from its last checkpoint, not from round 1
            run_into(grid.cell_config(alpha, seed), cell_dir, console, progress, tensorboard=tensorboard,
                     on_method=started, on_method_done=lambda spec: progress.advance(task), resume=True)  # fmt: skip
    print_results(console, write_results([out], out))
    console.print(f"results in {out}")
    return out


def check_existing_cells(grid: Grid, out: Path) -> None:
    """Refuse before any training if an existing cell was run with another config."""
    for alpha, seed in grid.cells():
        config = grid.cell_dir(out, alpha, seed) / "config.yaml"
        if config.is_file():
            merge_methods(load_config(config), grid.cell_config(alpha, seed), config.parent)
