"""(Re)write the measured tables of benchmarks/RESULTS.md from the JSON in benchmarks/results/.

Each table sits between `<!-- generated: NAME -->` and `<!-- end generated -->`, NAME being the JSON
file's stem (simulator-cpu, galore-cuda-bfloat16, ...); the prose around it is kept. A JSON with no
block yet gets a new section at the end. Every block starts with the machine, library versions,
device, dtype and date recorded in its JSON, and shows medians.

    .venv/bin/python benchmarks/results_md.py      # what `make bench` does after running the scripts
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Callable

HERE = Path(__file__).parent
END = "<!-- end generated -->"
BLOCK = re.compile(r"<!-- generated: (?P<name>[\w.-]+) -->\n.*?" + re.escape(END), re.S)
TITLES = {
    "simulator": "Simulator overhead",
    "galore": "GaLore-AdamW step time and state",
    "ajive": "AJIVE wall time",
    "wordnet": "WordNet parse time",
    "rounds": "Seconds, bytes and memory per round",
    "tasks": "Tasks: seconds per round, peak memory and bytes",
    "grid": "Benchmark grid",
    "population": "Populations: peak RSS, checkpoint bytes and seconds per round",
}


def machine_line(report: dict) -> str:
    m = report.get("machine", {})
    where = ", ".join(str(x) for x in (m.get("platform"), f"{m['cpu_count']} CPUs" if m.get("cpu_count") else None,
                                        f"{m['memory_gib']} GiB" if m.get("memory_gib") else None,
                                        m.get("gpu")) if x)  # fmt: skip
    libs = ", ".join(
        f"{name} {m[name]}" for name in ("python", "torch", "transformers", "peft", "numpy", "scipy") if m.get(name)
    )
    device = m.get("device") or report.get("device") or report.get("workload", {}).get("device", "cpu")
    dtype = m.get("dtype") or report.get("dtype") or report.get("workload", {}).get("dtype", "float32")
    dtype = {"fp32": "float32", "bf16": "bfloat16"}.get(dtype, dtype)
    load = m.get("load_avg_1m_start")
    extra = [
        f"torch threads {m['threads']}" if m.get("threads") else None,
        f"load {load:.2f}" if load is not None else None,
        m.get("date"),
    ]
    return f"Measured on {where}; {libs}; device {device}, dtype {dtype}; " + ", ".join(x for x in extra if x) + "."


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def simulator_table(report: dict) -> list[str]:
    rows = [[method, ", ".join(f"{v:.4f}" for v in values)] for method, values in report["overhead_per_round"].items()]
    met = "met" if report["target_met"] else "**missed**"
    rows.append([f"**median** (target ≤ {report['target']})", f"**{report['median_overhead']:.4f}** {met}"])
    return table(["method", "overhead per round (round wall time / (client training + evaluation))"], rows)


def galore_table(report: dict) -> list[str]:
    rows = []
    for r in report["results"]:
        s, b = r["step_s"], r["state_bytes"]
        rows.append([r["model"], str(r["rank"]), f"{s['adamw']:.3g}",
        f"{s['galore_steady']:.3g} / {s['galore_refresh']:.3g} / {s['galore_amortised']:.3g}",
                     f"{r['step_ratio_amortised']:.2f} " + ("met" if r["step_target_met"] else "**missed**"),
                     f"{b['galore_matrices']:,}", f"{b['bound']:,}", f"{b['adamw']:,}"])  # fmt: skip
    header = ["weights", "rank", "AdamW step (s)", "GaLore steady / refresh / amortised (s)", "ratio (target ≤ 1.15)",
              "GaLore matrix state bytes", "bound", "AdamW state bytes"]  # fmt: skip
    return [f"Medians over {report['results'][0]['samples']['adamw']} AdamW steps per case (MiniLM); update_proj_gap "
            f"{report['results'][0]['update_proj_gap']}, proj_type {report['results'][0]['proj_type']}.",
            ""] + table(header, rows)  # fmt: skip


def ajive_table(report: dict) -> list[str]:
    rows = [[str(r["K"]), f"{r['n']}x{r['d']}", r["signal_ranks"], str(r["R"]), f"{r['cold_s_median']:.3g}",
             f"{r['warm_s_median']:.3g}"]
            for r in report["results"]]  # fmt: skip
    target = f"target K = 10 blocks of 768x8 < {report['target_K10_768x8_s']} s: " + (
        "met" if report["meets_target"] else "**missed**"
    )
    return [
        f"Medians of {report['repeats']} repeats, {report['samples_per_bound']} samples per bound; {target}.",
        "",
    ] + table(["K", "block", "signal ranks", "total rank R", "cold median (s)", "warm median (s)"], rows)


def wordnet_table(report: dict) -> list[str]:
    met = "met" if report["target_met"] else "**missed**"
    rows = [
        [
            f"{report['synsets']:,}",
            ", ".join(f"{s:.2f}" for s in report["seconds"]),
            f"**{report['median_s']:.2f}** {met}",
        ]
    ]
    return table(["synsets parsed", "seconds per parse", f"median (target < {report['target_s']} s)"], rows)


def rounds_table(report: dict) -> list[str]:
    w = report["workload"]
    rows = [[r["method"], f"{r['seconds_round_median']:.2f}",
             ", ".join(f"{v:.2f}" for v in r["seconds_round_per_repeat"]),
             f"{r['seconds_train_median']:.2f}", f"{r['seconds_aggregate_median']:.2f}",
             f"{r['seconds_eval_median']:.2f}",
             f"{r['seconds_ajive_median']:.2f}", f"{r['mb_up_per_round']:.2f}", f"{r['mb_down_per_round']:.2f}",
             f"{r['peak_rss_mb']:.0f}"]
            for r in report["results"]]  # fmt: skip
    header = ["method", "s/round (median)", "per repeat", "training", "aggregation", "evaluation", "of which AJIVE",
              "MB up", "MB down", "peak RSS MB"]  # fmt: skip
    return [f"`{w['config']}`, {w['rounds']} rounds x {w['repeats']} repeats, {w['clients_per_round']} clients per "
            f"round x {w['local_steps']} local steps; seconds are medians over rounds, then over repeats.",
            ""] + table(header, rows)  # fmt: skip


TASK_PRESETS = {"generation": "generation (configs/generation.yaml)",
                "multiple_choice": "multiple choice (configs/multiple_choice.yaml)",
                "vision": "vision (configs/vision.yaml)"}  # fmt: skip
METRIC_NAMES = {"rougeL": "ROUGE-L", "accuracy": "accuracy"}


def tasks_table(report: dict) -> list[str]:
    rows = [[TASK_PRESETS.get(c["task"], c["task"]), c["method"], f"{c['seconds_per_round']:.1f}",
             f"{c['peak_rss_mb']:.0f}",
             f"{c['mb_up_per_round']:.2f}", f"{c['mb_down_per_round']:.2f}",
             f"{METRIC_NAMES.get(c['metric'], c['metric'])} {c['final_metric']:.4f}"]
            for c in report["cells"]]  # fmt: skip
    header = ["task (preset)", "method", "s/round", "peak RSS (MB)", "MB up/round", "MB down/round",
              f"final metric ({report['workload']['rounds']} rounds)"]  # fmt: skip
    return table(header, rows)


def _fmt(value, spec=".4f") -> str:
    return "–" if value is None else format(value, spec)


def grid_table(report: dict) -> list[str]:
    """Per alpha: final accuracy per seed, its mean, the paired difference ref − method per seed and its
    mean, bytes and the mean update-space diagnostics (grid_summary.py's JSON)."""
    cells, ref, lines = report["cells"], report["ref"], []
    seeds = report.get("seeds") or sorted({c["seed"] for c in cells})
    alphas = report.get("alphas") or sorted({c["alpha"] for c in cells})
    for alpha in alphas:
        at = {(c["method"], c["seed"]): c for c in cells if c["alpha"] == alpha}
        header = [f"alpha {alpha:g}", *[f"seed {s}" for s in seeds], "mean", f"{ref} minus it, per seed", "mean diff",
                  "MB up + down / round", "rank of ΔW̄", "cancellation", "V̂ vs mean"]  # fmt: skip
        rows = []
        for method in report["methods"]:
            mine = [at.get((method, s)) for s in seeds]
            if not any(mine):
                continue
            acc = [c["final_accuracy"] if c else None for c in mine]
            diffs = [
                at[(ref, s)]["final_accuracy"] - c["final_accuracy"]
                for s, c in zip(seeds, mine)
                if c and (ref, s) in at
            ]
            done = [c for c in mine if c]
            mean_of = lambda key: statistics.mean(c[key] for c in done) if all(key in c for c in done) else None  # noqa: E731
            mb = mean_of("mb_up_per_round") + mean_of("mb_down_per_round")
            rows.append([f"**{method}**" if method == ref else method, *map(_fmt, acc),
                         _fmt(statistics.mean(a for a in acc if a is not None)),
                         "" if method == ref else ", ".join(f"{d:+.2f}" for d in diffs),
                         "" if method == ref or not diffs else f"**{statistics.mean(diffs):+.3f}**", f"{mb:.1f}",
                         _fmt(mean_of("diag_rank_mean"), ".1f"), _fmt(mean_of("diag_cancellation_ratio"), ".3f"),
                         _fmt(mean_of("v_hat_rel_diff_mean"), ".3f")])  # fmt: skip
        lines += table(header, rows) + [""]
    expected = len(report["methods"]) * len(seeds) * len(alphas)
    status = "complete" if len(cells) >= expected else f"**partial: {len(cells)} of {expected} cells**"
    note = f" {report['note']}." if report.get("note") else ""
    return [f"Final test accuracy (chance 1/classes); \"diff\" = {ref} minus the method on the same seed (the seed "
            f"fixes the partition: a paired comparison); `–` = not run yet. Diagnostics: mean over rounds. "
            f"Grid {status}.{note}",
            ""] + lines[:-1]  # fmt: skip


def population_table(report: dict) -> list[str]:
    """Per method, each population's peak RSS, median s/round and median checkpoint bytes, and the
    targets: peak RSS at the largest population <= 1.2x the smallest's."""
    w, cells = report["workload"], report["results"]
    pops = w["populations"]
    by = {(c["method"], c["population"]): c for c in cells}
    methods = list(dict.fromkeys(c["method"] for c in cells))
    rows, met = [], 0
    for m in methods:
        got = [by.get((m, p)) for p in pops]
        ratio = got[-1]["peak_rss_mb"] / got[0]["peak_rss_mb"] if got[0] and got[-1] else None
        met += ratio is not None and ratio <= 1.2
        per = lambda f: " / ".join("–" if c is None else f(c) for c in got)  # noqa: E731
        rows.append([m, per(lambda c: f"{c['peak_rss_mb']:.0f}"), _fmt(ratio, ".2f"),
                     per(lambda c: f"{c['seconds_round_median']:.2f}"),
                     per(lambda c: f"{_checkpoint_mb(c):.1f}"),
                     per(lambda c: f"{statistics.median(c['checkpoint_state_files']):g}"),
                     per(lambda c: f"{c['seconds_partition']:.2f}")])  # fmt: skip
    header = ["method", f"peak RSS MB ({' / '.join(map(str, pops))} clients)", f"{pops[-1]} ÷ {pops[0]}",
              "s/round (median)", "MB per checkpoint (median)", "state files per checkpoint",
              "partition s"]  # fmt: skip
    intro = (f"`{w['config']}`, {w['rounds']} rounds, {w['clients_per_round']} clients per round x "
             f"{w['local_steps']} local step, a checkpoint after every round; one fresh process per cell. Peak "
             f"RSS target (<= 1.2x at {pops[-1]} clients): met by {met} of {len(methods)} methods.")  # fmt: skip
    return [intro, ""] + table(header, rows)


def _checkpoint_mb(cell: dict) -> float:
    """Median MB a checkpoint wrote, the first (which writes the run's first files) aside."""
    return statistics.median(cell["checkpoint_bytes"][1:] or cell["checkpoint_bytes"]) / 1e6


RENDERERS: dict[str, Callable[[dict], list[str]]] = {
    "simulator": simulator_table, "galore": galore_table, "ajive": ajive_table, "wordnet": wordnet_table,
    "rounds": rounds_table, "tasks": tasks_table, "grid": grid_table, "population": population_table,
}  # fmt: skip


def render_block(name: str, report: dict) -> str:
    lines = [f"<!-- generated: {name} -->", f"_{machine_line(report)} JSON: `results/{name}.json`._", ""]
    lines += RENDERERS[name.split("-")[0]](report)
    return "\n".join(lines + [END])


def update(doc: str, results: dict[str, dict]) -> str:
    """`doc` with every generated block replaced by its JSON's table; new JSONs appended as sections."""
    done = set()

    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in results:
            return match.group(0)  # no JSON (e.g. a GPU run made elsewhere): keep what is there
        done.add(name)
        return render_block(name, results[name])

    doc = BLOCK.sub(replace, doc)
    for name in sorted(set(results) - done):
        kind, _, where = name.partition("-")
        doc = doc.rstrip("\n") + f"\n\n## {TITLES.get(kind, kind)} ({where})\n\n{render_block(name, results[name])}\n"
    return doc


def read_results(folder: Path) -> dict[str, dict]:
    return {
        p.stem: json.loads(p.read_text())
        for p in sorted(Path(folder).glob("*.json"))
        if p.stem.split("-")[0] in RENDERERS
    }


def main(results: Path = HERE / "results", doc: Path = HERE / "RESULTS.md") -> int:
    sys.path.insert(0, str(HERE.parent / "src"))
    from fedsub.core.io import atomic_write_text

    atomic_write_text(doc, update(doc.read_text(), read_results(results)))
    print(f"rewrote the generated tables of {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
