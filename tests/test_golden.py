"""Golden metrics (issue 16, point 5): every case in tests/golden/cases.py, rerun through `fedsub run`,
writes the records of its golden file, timing and memory aside (floats to rel 1e-4: other CPUs, other
last digits; see tests/golden/README.md).

A failure lists case, method, round, key, golden and now. If the change was deliberate, re-record
(tests/golden/README.md): PYTHONPATH=src python tests/golden/record.py CASE...
"""

from __future__ import annotations

import pytest
from golden.cases import CASES, HERE, SLOW, config_path, config_text, differences, read_case, records_path, run_case

RECORD = "PYTHONPATH=src python tests/golden/record.py"


def case_params():
    return [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in CASES]


@pytest.mark.parametrize("name", case_params())
def test_records_equal_the_golden_file(name, tmp_path):
    if CASES[name].get("engine") == "flower":
        pytest.importorskip("flwr")
    assert records_path(name).is_file(), f"no golden file for case {name}; record it: {RECORD} {name}"
    assert config_path(name).read_text() == config_text(name), (
        f"case {name}'s config is not the one its golden file was recorded with ({config_path(name).name}); "
        f"if that change is deliberate, re-record: {RECORD} {name}"
    )
    lines = differences(name, read_case(name), run_case(name, tmp_path))
    if lines:
        pytest.fail(f"case {name} differs from {records_path(name).name}:\n  " + "\n  ".join(lines), pytrace=False)


def test_every_registered_method_has_a_case(capsys):
    """`fedsub methods` lists the registry: a new method needs its golden case."""
    from fedsub.app.cli import main

    assert main(["methods"]) == 0
    registered = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line and not line[0].isspace()}
    covered = {m if isinstance(m, str) else m["name"] for raw in CASES.values() for m in raw["methods"]}
    assert registered <= covered, f"methods without a golden case: {sorted(registered - covered)}"


def test_every_golden_file_belongs_to_a_case():
    files = {p.stem for p in HERE.glob("*.jsonl")} | {p.stem for p in HERE.glob("*.yaml")}
    assert files == set(CASES), (
        f"golden files without a case: {sorted(files - set(CASES))}; cases without files: {sorted(set(CASES) - files)}"
    )
