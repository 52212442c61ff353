"""benchmarks/: RESULTS.md's generated tables come from the JSON in benchmarks/results/, and the
scripts take --device / --dtype."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_results_md():
    spec = importlib.util.spec_from_file_location("results_md", BENCH / "results_md.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_results_md_matches_the_committed_json():
    results_md = load_results_md()
    doc = (BENCH / "RESULTS.md").read_text()
    results = results_md.read_results(BENCH / "results")
    assert {"simulator-cpu", "galore-cpu", "ajive-cpu"} <= set(results)
    assert results_md.update(doc, results) == doc  # `make bench` would write exactly this page


def test_a_new_result_gets_its_own_section_and_the_prose_is_kept():
    results_md = load_results_md()
    doc = (
        "# Benchmarks\n\nprose before\n\n<!-- generated: simulator-cpu -->\nold table\n<!-- end generated -->\n\n"
        "prose after\n"
    )
    cpu = json.loads((BENCH / "results" / "simulator-cpu.json").read_text())
    gpu = {**cpu, "overhead_per_round": {"fedit": [1.5, 1.25, 1.75]}, "median_overhead": 1.5, "target_met": False}
    gpu["machine"] = {
        **cpu["machine"],
        "device": "cuda",
        "dtype": "bfloat16",
        "gpu": "NVIDIA H100",
        "transformers": "5.23.0",
    }
    out = results_md.update(doc, {"simulator-cpu": cpu, "simulator-cuda-bfloat16": gpu})
    assert (
        out.startswith("# Benchmarks\n\nprose before\n\n<!-- generated: simulator-cpu -->\n") and "prose after\n" in out
    )
    assert "old table" not in out and f"**{cpu['median_overhead']:.4f}** met" in out
    section = out[out.index("## Simulator overhead (cuda-bfloat16)") :]
    assert "| fedit | 1.5000, 1.2500, 1.7500 |" in section and "**1.5000** **missed**" in section
    assert "NVIDIA H100" in section and "transformers 5.23.0" in section and "device cuda, dtype bfloat16" in section
    assert results_md.update(out, {"simulator-cpu": cpu, "simulator-cuda-bfloat16": gpu}) == out
    assert results_md.update(out, {}) == out  # a block without its JSON is left alone


@pytest.mark.slow
def test_bench_script_runs_in_bfloat16_and_records_the_machine(tmp_path):
    out = tmp_path / "ajive.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable,
        str(BENCH / "bench_ajive.py"),
        "--quick",
        "--repeats",
        "1",
        "--samples",
        "20",
        "--dtype",
        "bfloat16",
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True, capture_output=True, env=env)
    report = json.loads(out.read_text())
    machine = report["machine"]
    assert machine["dtype"] == "bfloat16" and machine["device"] == "cpu"
    assert machine["torch"] and machine["transformers"] and machine["peft"] and machine["date"]
    assert [r["K"] for r in report["results"]] == [10, 10] and all(r["cold_s_median"] > 0 for r in report["results"])


def test_rounds_bench_takes_medians_over_repeats_and_renders_them(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # bench_rounds imports benchmarks/common.py
    spec = importlib.util.spec_from_file_location("bench_rounds", BENCH / "bench_rounds.py")
    bench_rounds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_rounds)

    def cell(seconds):
        parts = dict.fromkeys(bench_rounds.PARTS, seconds / 2)
        return {
            **parts,
            "seconds_round": seconds,
            "bytes_up_per_round": 2e6,
            "bytes_down_per_round": 1e6,
            "peak_rss_mb": seconds * 100,
        }

    runs = [{"fedit": cell(s), "fedgalore": cell(s + 1)} for s in (3.0, 9.0, 4.0)]
    rows = bench_rounds.combine(runs)
    assert [r["method"] for r in rows] == ["fedit", "fedgalore"]
    assert rows[0]["seconds_round_median"] == 4.0 and rows[0]["seconds_train_median"] == 2.0
    assert rows[1]["seconds_round_per_repeat"] == [4.0, 10.0, 5.0] and rows[1]["peak_rss_mb"] == 1000.0
    assert rows[0]["mb_up_per_round"] == 2.0 and rows[0]["mb_down_per_round"] == 1.0
    cpu = json.loads((BENCH / "results" / "simulator-cpu.json").read_text())
    report = {"benchmark": "rounds", "machine": cpu["machine"], "results": rows,
              "workload": {"config": "configs/fedgalore_grid.yaml", "rounds": 3, "repeats": 3, "clients_per_round": 8,
                           "local_steps": 5}}  # fmt: skip
    out = load_results_md().update("# Benchmarks\n", {"rounds-cpu": report})
    assert "## Seconds, bytes and memory per round (cpu)" in out
    assert "| fedit | 4.00 | 3.00, 9.00, 4.00 | 2.00 | 2.00 | 2.00 | 2.00 | 2.00 | 1.00 | 900 |" in out


def test_diag_rank_pools_rounds_per_method_and_fails_in_one_line(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("diag_rank", BENCH / "diag_rank.py")
    diag_rank = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diag_rank)
    for run, ranks in (("a", [8.0, 8.0]), ("b", [6.0, 8.0])):
        for method, scale in (("fedgalore", 1.0), ("fedit", 3.0)):
            records = [{"round": i + 1, "diag_rank_mean": scale * r, "diag_rank_max": scale * 8,
                        "diag_cancellation_ratio": 0.5,
                        "diag_cos_pairwise": 0.25 * i} for i, r in enumerate(ranks)]  # fmt: skip
            (tmp_path / run / method).mkdir(parents=True)
            (tmp_path / run / method / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "b" / "fedavg_full").mkdir()
    (tmp_path / "b" / "fedavg_full" / "metrics.jsonl").write_text(json.dumps({"round": 1}) + "\n")
    diag_rank.main([str(tmp_path / "a"), str(tmp_path / "b")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == ["| fedavg_full | 1 | 1 | – | – | – | – |",
                         "| fedgalore | 2 | 4 | 7.500 | 8.000 | 0.500 | 0.125 |",
                         "| fedit | 2 | 4 | 22.500 | 24.000 | 0.500 | 0.125 |"]  # fmt: skip
    with pytest.raises(SystemExit) as failed:
        diag_rank.main([str(tmp_path / "missing")])
    assert str(failed.value) == f"error: {tmp_path / 'missing'}: not a directory"


def test_grid_table_pairs_each_seed_with_the_reference_and_says_when_partial():
    results_md = load_results_md()
    cell = lambda method, seed, acc: {"method": method, "alpha": 0.1, "seed": seed, "final_accuracy": acc,  # noqa: E731
                                      "mb_up_per_round": 1.0, "mb_down_per_round": 2.5}  # fmt: skip
    report = {"ref": "a", "methods": ["a", "b"], "cells": [cell("a", 0, 0.6), cell("a", 1, 0.5), cell("b", 0, 0.4)]}
    lines = results_md.grid_table(report)
    assert "partial: 3 of 4 cells" in lines[0]
    row_b = next(line for line in lines if line.startswith("| b |"))
    # b ran seed 0 only: 0.6 - 0.4 = +0.20 paired; its mean is over what ran; seed 1 shows as not run
    assert row_b == "| b | 0.4000 | – | 0.4000 | +0.20 | **+0.200** | 3.5 | – | – | – |"


def test_choose_lr_reads_labelled_sweep_rows_and_breaks_ties_by_best_then_smaller_lr(tmp_path):
    spec = importlib.util.spec_from_file_location("choose_lr", BENCH / "choose_lr.py")
    choose_lr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(choose_lr)
    rows = ["method,alpha,seed,final_accuracy,best_accuracy", "fedit_lr1e-3,0.5,0,0.70,0.72",
            "fedit_lr2e-3,0.5,0,0.70,0.75",
            "fedit_lr5e-3,0.5,0,0.70,0.75", "fedgalore,0.5,0,0.9,0.9"]  # fmt: skip
    (tmp_path / "results.csv").write_text("\n".join(rows) + "\n")
    sweep = choose_lr.read_sweep([str(tmp_path / "results.csv")])
    assert list(sweep[("0.5", "0")]) == ["fedit"]  # an unlabelled row is not part of the sweep
    per_lr = sweep[("0.5", "0")]["fedit"]
    assert per_lr == {1e-3: (0.70, 0.72), 2e-3: (0.70, 0.75), 5e-3: (0.70, 0.75)}
    assert choose_lr.choose(per_lr) == 2e-3  # same final: the better best round, then the smaller lr


def test_population_table_reports_each_population_and_whether_peak_rss_stays_within_1_2x():
    results_md = load_results_md()

    def cell(method, population, peak, checkpoints):
        timing = {"seconds_round_median": 1.5, "seconds_partition": 0.25}
        return {"method": method, "population": population, "peak_rss_mb": peak, **timing,
                "checkpoint_bytes": checkpoints, "checkpoint_state_files": [10, 10]}  # fmt: skip

    cells = [cell("a", 10, 1000, [9e6, 2e6, 4e6]), cell("a", 2000, 1150, [9e6, 3e6]),
             cell("b", 10, 1000, [1e6]), cell("b", 2000, 1500, [1e6])]  # fmt: skip
    workload = {"config": "c.yaml", "rounds": 3, "clients_per_round": 10, "local_steps": 1, "populations": [10, 2000]}
    lines = results_md.population_table({"workload": workload, "results": cells})
    assert "met by 1 of 2 methods" in lines[0]
    # a: 1150 / 1000 = 1.15; median checkpoint of those after the first: (2 + 4) / 2 = 3.0 MB, then 3.0 MB
    assert "| a | 1000 / 1150 | 1.15 | 1.50 / 1.50 | 3.0 / 3.0 | 10 / 10 | 0.25 / 0.25 |" in lines
    assert next(line for line in lines if line.startswith("| b |")).split(" | ")[2] == "1.50"
