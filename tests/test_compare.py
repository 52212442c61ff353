"""`fedsub compare` and `fedsub report` on a tiny 2 x 2 grid (alphas 0.5, 1 x seeds 0, 1; fedit, ffa_lora)."""

import csv
import json
import shutil

import pytest
import yaml
from fedsub_fixtures import write_csv_experiment

from fedsub.app.cli import main

METHODS = ["fedit", "ffa_lora"]
ALPHAS, SEEDS = ["0.5", "1"], [0, 1]
OUTPUTS = ["results.csv", "results.md", "accuracy_rounds.png", "accuracy_bytes.png", "partition_heatmaps.png"]


def cell(grid, alpha, seed, method=None):
    path = grid / f"alpha-{alpha}" / f"seed-{seed}"
    return path / method if method else path


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The grid built in three interrupted steps, with what the first two left behind."""
    tmp = tmp_path_factory.mktemp("compare")
    config = write_csv_experiment(tmp, METHODS)
    out = tmp / "grid"
    # 1. one cell by hand, as `fedsub run` does it (the layout the lead's long grids use)
    assert main(["run", str(config), "--set", "partition.alpha=1", "--set", "seed=1", "--set", "methods=fedit",
                 "--out", str(cell(out, "1", 1)), "--quiet"]) == 0  # fmt: skip
    # 2. a subset of the grid, then 3. the whole grid: only the missing cells may run
    assert (
        main(
            [
                "compare",
                str(config),
                "--methods",
                "fedit",
                "--alphas",
                "0.5",
                "--seeds",
                "0",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    before = {
        p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file() and "/fedit/" in p.as_posix()
    }
    assert (
        main(["compare", str(config), "--alphas", ",".join(ALPHAS), "--seeds", "0,1", "--out", str(out), "--quiet"])
        == 0
    )
    return config, out, before


def summaries(out):
    return {
        (m, a, s): json.loads((cell(out, a, s, m) / "summary.json").read_text())
        for m in METHODS
        for a in ALPHAS
        for s in SEEDS
    }


def test_grid_resumes_without_touching_finished_cells(grid):
    _, out, before = grid
    assert len(before) == 2 * 3  # metrics.jsonl, final model, summary.json of fedit in 2 cells
    for path, (mtime, content) in before.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content, path
    for (method, alpha, seed), summary in summaries(out).items():
        assert summary["method"] == method and summary["rounds"] == 2
        records = [
            json.loads(line) for line in (cell(out, alpha, seed, method) / "metrics.jsonl").read_text().splitlines()
        ]
        assert [r["round"] for r in records] == [1, 2]
    for alpha in ALPHAS:
        for seed in SEEDS:
            config = yaml.safe_load((cell(out, alpha, seed) / "config.yaml").read_text())
            assert config["seed"] == seed and config["partition"]["alpha"] == float(alpha)
            assert [m["name"] for m in config["methods"]] == METHODS  # methods added to the cell, in order
            run_summary = json.loads((cell(out, alpha, seed) / "summary.json").read_text())
            assert [s["method"] for s in run_summary["methods"]] == METHODS


def test_cells_of_one_alpha_and_seed_share_the_partition_and_seeds_differ(grid):
    _, out, _ = grid
    partition = {
        (a, s): json.loads((cell(out, a, s) / "partition.json").read_text())["clients"] for a in ALPHAS for s in SEEDS
    }
    assert partition[("0.5", 0)] != partition[("0.5", 1)] and partition[("0.5", 0)] != partition[("1", 0)]


def test_results_csv_holds_every_summary(grid):
    _, out, _ = grid
    rows = list(csv.DictReader((out / "results.csv").open()))
    expected = summaries(out)
    assert len(rows) == len(expected) == 8
    for row in rows:
        summary = expected[(row["method"], row["alpha"], int(row["seed"]))]
        for key in (
            "final_accuracy",
            "best_accuracy",
            "final_macro_f1",
            "bytes_up_per_round",
            "seconds_per_round",
            "peak_rss_mb",
        ):
            assert float(row[key]) == summary[key]
        assert row["run_dir"] == f"alpha-{row['alpha']}/seed-{row['seed']}"


def read_table(path):
    """(method, alpha) -> the cells of results.md's row."""
    table = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 11 and cells[0] in METHODS:
            table[(cells[0], cells[1])] = cells
    return table


def assert_table_matches(table, expected):
    assert sorted(table) == sorted((m, a) for m in METHODS for a in ALPHAS)
    for (method, alpha), row in table.items():
        runs = [expected[(method, alpha, s)] for s in SEEDS]
        for column, key in enumerate(["final_accuracy", "best_accuracy", "final_macro_f1", "best_macro_f1"], start=2):
            values = [r[key] for r in runs]
            mean = sum(values) / len(values)
            std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
            assert row[column] == f"{mean:.4f} ± {std:.4f}"
        for column, key, scale in [
            (6, "bytes_up_per_round", 1e-6),
            (7, "bytes_down_per_round", 1e-6),
            (8, "seconds_per_round", 1),
            (9, "peak_rss_mb", 1),
        ]:
            assert row[column] == f"{sum(r[key] for r in runs) * scale / len(runs):.2f}"
        assert row[10] == "2"


def test_results_table_is_mean_and_std_over_seeds_of_the_summaries(grid):
    _, out, _ = grid
    assert_table_matches(read_table(out / "results.md"), summaries(out))


def test_results_table_of_summaries_that_differ_between_seeds(grid, tmp_path):
    """The tiny model's accuracies tie across seeds; give every cell distinct numbers and re-report."""
    _, out, _ = grid
    copy = tmp_path / "grid"
    shutil.copytree(out, copy)
    for index, ((method, alpha, seed), summary) in enumerate(sorted(summaries(copy).items())):
        for offset, key in enumerate(["final_accuracy", "best_accuracy", "final_macro_f1", "best_macro_f1"]):
            summary[key] = round(0.1 + 0.037 * index + 0.011 * offset + 0.2 * seed, 6)
        summary["bytes_up_per_round"] = 1e6 * (index + 1)
        (cell(copy, alpha, seed, method) / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(copy)]) == 0
    expected = summaries(copy)
    assert len({s["final_accuracy"] for s in expected.values()}) == 8
    assert_table_matches(read_table(copy / "results.md"), expected)


def test_plots_are_written_with_a_panel_per_alpha(grid):
    from matplotlib.image import imread

    _, out, _ = grid
    for name in OUTPUTS[2:]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    rounds, heatmaps = imread(out / "accuracy_rounds.png"), imread(out / "partition_heatmaps.png")
    assert rounds.shape[1] == 2 * 5 * 110  # two panels of 5 inches at 110 dpi
    assert heatmaps.shape[:2] == (2 * 3.5 * 110, 2 * 4.5 * 110)  # 2 alphas x 2 seeds


def test_report_rebuilds_identical_results(grid):
    _, out, _ = grid
    before = {name: (out / name).read_bytes() for name in OUTPUTS[:2]}
    for name in OUTPUTS:
        (out / name).unlink()
    assert main(["report", str(out)]) == 0
    assert {name: (out / name).read_bytes() for name in OUTPUTS[:2]} == before
    assert all((out / name).is_file() for name in OUTPUTS)


def test_report_of_a_single_run_directory(grid, tmp_path):
    _, out, _ = grid
    assert main(["report", str(cell(out, "1", 1)), "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["method"], r["alpha"], r["seed"]) for r in rows] == [("fedit", "1", "1"), ("ffa_lora", "1", "1")]


def test_rerunning_a_finished_grid_trains_nothing(grid, capsys):
    config, out, _ = grid
    assert main(["compare", str(config), "--alphas", ",".join(ALPHAS), "--seeds", "0,1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "8/8 cells finished" in err and "rounds x" not in err


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--methods", "fedit,fedsgd"], "--methods: unknown method key 'fedsgd'; the config has fedit, ffa_lora"),
        (["--alphas", "0.1,abc"], "--alphas: 'abc' is not a positive number"),
        (["--alphas", "0.1,-1"], "--alphas: '-1' is not a positive number"),
        (["--alphas", "0.1,,0.5"], "--alphas: '0.1,,0.5' needs distinct"),
        (["--alphas", "0.1,0.1"], "needs distinct"),
        (["--seeds", "0,x"], "--seeds: '0,x' is not a comma-separated list of ints"),
        (["--alphas", "0.1,0.5", "--set", "partition.scheme=iid"], "partition.scheme iid has no alpha"),
        (["--set", "train.lr=0.5"], "config.yaml has train.lr=0.01, this run 0.5"),
        (["--set", "methods.0.rank=4"], "method fedit there has rank=8, this run 4"),
    ],
)
def test_compare_bad_input_exits_2_with_one_line(grid, capsys, args, expected):
    config, out, _ = grid
    assert main(["compare", str(config), "--alphas", "0.5", "--seeds", "0", "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_report_of_a_missing_or_empty_directory_exits_2(tmp_path, capsys, make):
    target = tmp_path / "nothing"
    if make == "empty":
        target.mkdir()
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(target) in err and len(err.splitlines()) == 1, err


def test_an_interrupted_cell_is_rerun_and_the_others_are_kept(grid, tmp_path):
    from fedsub.engines.rounds import TIMING_KEYS

    config, out, _ = grid
    copy = tmp_path / "grid"
    shutil.copytree(out, copy)
    broken = cell(copy, "0.5", 1, "ffa_lora")
    complete = (broken / "metrics.jsonl").read_text().splitlines()
    (broken / "summary.json").unlink()  # as if killed in round 2: one round logged, no summary
    (broken / "metrics.jsonl").write_text(complete[0] + "\n")
    others = {p: p.stat().st_mtime_ns for p in copy.rglob("metrics.jsonl") if p.parent != broken}
    assert (
        main(["compare", str(config), "--alphas", ",".join(ALPHAS), "--seeds", "0,1", "--out", str(copy), "--quiet"])
        == 0
    )
    rerun = (broken / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]  # noqa: E731
    assert strip(rerun) == strip(complete) and (broken / "summary.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in others} == others


def test_a_method_killed_mid_run_continues_from_its_checkpoint(grid, tmp_path, monkeypatch, capsys):
    from fedsub.engines.rounds import TIMING_KEYS
    from fedsub.engines.simulation import Simulation

    config, out, _ = grid
    args = [
        "compare",
        str(config),
        "--methods",
        "fedit",
        "--alphas",
        "0.5",
        "--seeds",
        "0",
        "--out",
        str(tmp_path / "g"),
        "--quiet",
    ]
    original = Simulation.run_round

    def killed_in_round_2(self, index, on_client=None):
        if index == 1:
            raise KeyboardInterrupt
        return original(self, index, on_client)

    def logged(self, index, on_client=None):
        rounds_run.append(index)
        return original(self, index, on_client)

    monkeypatch.setattr(Simulation, "run_round", killed_in_round_2)
    assert main(args) == 130
    assert "interrupted; run the same fedsub compare again" in capsys.readouterr().err
    rounds_run = []
    monkeypatch.setattr(Simulation, "run_round", logged)
    assert main(args) == 0
    assert rounds_run == [1]  # round 1 came from the checkpoint

    def strip(path):
        return [
            {k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in path.read_text().splitlines()
        ]

    assert strip(cell(tmp_path / "g", "0.5", 0, "fedit") / "metrics.jsonl") == strip(
        cell(out, "0.5", 0, "fedit") / "metrics.jsonl"
    )


def test_a_generation_grid_is_reported_by_rouge_and_bleu(tmp_path):
    """Generation runs have no accuracy: the table and plots use ROUGE-L and BLEU-4 (the summaries'
    final_/best_ rougeL and bleu4), not columns of '-'."""
    from matplotlib.image import imread

    runs = {0: (0.25, 0.30, 4.0, 5.0), 1: (0.35, 0.40, 6.0, 7.0)}  # seed: final/best ROUGE-L, final/best BLEU-4
    for seed, (rouge, best_rouge, bleu, best_bleu) in runs.items():
        run = tmp_path / f"seed-{seed}"
        (run / "fedit").mkdir(parents=True)
        (run / "config.yaml").write_text(
            yaml.safe_dump({"seed": seed, "partition": {"alpha": 0.5}, "methods": [{"name": "fedit"}]})
        )
        records = [
            {"round": r, "test_loss": 3.0, "rougeL": rouge * r / 2, "bleu4": bleu, "bytes_up": 10, "bytes_down": 10}
            for r in (1, 2)
        ]
        (run / "fedit" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        summary = {"method": "fedit", "rounds": 2, "final_accuracy": None, "final_rougeL": rouge,
        "best_rougeL": best_rouge,
                   "final_bleu4": bleu, "best_bleu4": best_bleu, "final_perplexity": 20.0, "bytes_up_per_round": 1e6,
                   "bytes_down_per_round": 2e6, "seconds_per_round": 1.5, "peak_rss_mb": 100.0}  # fmt: skip
        (run / "fedit" / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "results.md").read_text()
    assert (
        "| method | alpha | final ROUGE-L | best ROUGE-L | final BLEU-4 | best BLEU-4 |" in text
        and "final acc" not in text
    )
    std = lambda a, b: abs(a - b) / 2**0.5  # noqa: E731 (sample std of two values)
    assert (
        f"| fedit | 0.5 | 0.3000 ± {std(0.25, 0.35):.4f} | 0.3500 ± {std(0.3, 0.4):.4f} | 5.0000 ± {std(4, 6):.4f} | "
        f"6.0000 ± {std(5, 7):.4f} | 1.00 | 2.00 | 1.50 | 100.00 | 2 |" in text
    )
    rows = list(csv.DictReader((tmp_path / "report" / "results.csv").open()))
    assert [float(r["final_rougeL"]) for r in rows] == [0.25, 0.35] and [
        float(r["final_perplexity"]) for r in rows
    ] == [20.0, 20.0]
    assert imread(tmp_path / "report" / "rougeL_rounds.png").shape[1] == 5 * 110  # one alpha panel
    assert not (tmp_path / "report" / "accuracy_rounds.png").exists()
