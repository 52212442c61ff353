"""Bad input exits 2 with one line naming the file or field (never a traceback), run directories are
never overwritten without --overwrite, and the config schema holds under hypothesis-fuzzed values."""

import json
import re

import pytest
import yaml
from fedsub_fixtures import one_line_error, write_csv_experiment
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsub.app.cli import main
from fedsub.config import ExperimentConfig, validate_config
from fedsub.errors import ConfigError


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\xff\xfe\x00\x01binary", "cannot read it as UTF-8 text"),
        (b"model:\n  name: [minilm\n", "not valid YAML"),
        (b"federation:\n  rounds: 3\ntrain: {lr: ", "not valid YAML"),
        (b"- just\n- a list\n", "the top level must be a mapping"),
    ],
)
def test_a_corrupt_or_truncated_config_file(tmp_path, capsys, content, expected):
    (tmp_path / "bad.yaml").write_bytes(content)
    assert main(["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert expected in one_line_error(capsys) and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("data.csv", 'text,label\n"a b",x\n"unterminated,y\n', "{path} line 3 has 1 fields, its header 2"),
        ("data.csv", 'text,label\n"a b",x\n"c d",y\n"cut mid-row"\n', "{path} line 4 has 1 fields, its header 2"),
        ("data.jsonl", '{"text": "a", "label": {"x": 1}}\n{"text": "b", "label": {"x": 2}}\n', "holds {{'x': 1}}"),
        ("data.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "lab', "cannot read {path} as json"),
        ("data.parquet", "PAR1 truncated", "cannot read {path} as parquet (ArrowInvalid"),
    ],
)
def test_a_corrupt_data_file_exits_2_and_leaves_no_run_directory(tmp_path, capsys, name, content, expected):
    config = write_csv_experiment(tmp_path, ["fedit"])
    path = tmp_path / name
    path.write_text(content)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet", "--set", f"data.dataset={path}"]) == 2
    assert expected.format(path=path) in one_line_error(capsys)
    assert not out.exists()  # nothing trained: the corrected rerun needs no --overwrite


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.name=/no/such/model", "field model.name: '/no/such/model' is not a model folder"),
        ("failures.dropout_prob=1.5", "field failures.dropout_prob: Input should be less than or equal to 1"),
        ("failures.min_clients=3", "failures.min_clients (3) exceeds federation.clients_per_round (2)"),
        ("failures.deadline_s=-1", "field failures.deadline_s"),
        ("validation.max_norm=0", "field validation.max_norm"),
        ("checkpoint.every=-1", "field checkpoint.every"),
        ("train.lr=-0.1", "field train.lr"),
        ("methods.0.rank=0", "field methods[fedit].rank"),
        ("device=gpu", "field device: 'gpu' is not cpu, cuda or cuda:N"),
        ("federation.rounds.x=1", "--set federation.rounds.x: 'rounds' is a value (2), not a section"),
        ("model.max_length=100000", "field model.max_length: Input should be less than or equal to 32768"),
    ],
)
def test_bad_values_exit_2_with_the_field(tmp_path, capsys, override, expected):
    config = write_csv_experiment(tmp_path, ["fedit"])
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet", "--set", override]) == 2
    assert expected in one_line_error(capsys)


def test_a_client_state_budget_below_one_state_exits_2_naming_the_field(tmp_path, capsys):
    """fedftg keeps its GaLore-AdamW state per client (0.0066 MB on the tiny model): 0.001 MB holds none."""
    config = write_csv_experiment(tmp_path, ["fedftg"])
    args = ["run", str(config), "--out", str(tmp_path / "run"), "--quiet", "--set", "clients.state_memory_mb=0.001"]
    assert main(args) == 2
    message = one_line_error(capsys)
    assert "clients.state_memory_mb: 0.001 MB is less than one client's state (0.0" in message
    assert message.endswith("(0.00663 MB, client 1); raise it to at least 0.01")
    assert (
        main(["run", str(config), "--out", str(tmp_path / "r2"), "--quiet", "--set", "clients.state_memory_mb=0"]) == 2
    )
    assert "field clients.state_memory_mb" in one_line_error(capsys)


def test_resume_errors(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "no config.yaml there" in one_line_error(capsys)
    assert main(["run", "--quiet"]) == 2
    assert "--resume DIR" in one_line_error(capsys)
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert main(["run", "--resume", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "drop --out" in one_line_error(capsys)


def test_resume_continues_a_run_and_refuses_a_corrupt_checkpoint(tmp_path, capsys):
    config = write_csv_experiment(tmp_path, ["fedit"])
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet", "--set", "checkpoint.keep=true"]) == 0
    finished = (out / "fedit" / "metrics.jsonl").read_text()
    (out / "fedit" / "summary.json").unlink()  # as if killed after the last round
    (out / "fedit" / "metrics.jsonl").write_text(finished.splitlines()[0] + "\n")
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert (out / "fedit" / "metrics.jsonl").read_text() == finished  # the checkpoint's records, not a rerun
    (out / "fedit" / "summary.json").unlink()
    pointer = out / "fedit" / "checkpoint" / "checkpoint.json"
    pointer.write_text(pointer.read_text()[:-10])
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    assert f"checkpoint {pointer} is corrupt or truncated" in one_line_error(capsys)
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 2  # never overwritten silently
    assert "--overwrite" in one_line_error(capsys) and pointer.is_file()


# ---------------------------------------------------------------- config fuzzing

FIELDS = [
    ("federation", "rounds"), ("federation", "clients_per_round"), ("federation", "num_clients"), ("federation",
     "eval_every"),
    ("train", "lr"), ("train", "local_steps"), ("train", "batch_size"), ("train", "max_grad_norm"), ("train",
     "local_epochs"),
    ("partition", "alpha"), ("partition", "scheme"), ("data", "test_fraction"), ("model", "max_length"),
    ("failures", "dropout_prob"), ("failures", "straggler_prob"), ("failures", "deadline_s"), ("failures",
     "min_clients"),
    ("validation", "max_norm"), ("checkpoint", "every"), ("checkpoint", "keep"), ("seed", None), ("dtype", None),
]  # fmt: skip
anything = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(FIELDS), anything), min_size=1, max_size=4))
def test_fuzzed_configs_validate_or_fail_with_one_line_naming_a_field(assignments):
    raw = {"methods": ["fedit"]}
    for (section, field), value in assignments:
        if field is None:
            raw[section] = value
        else:
            raw.setdefault(section, {})[field] = value
    try:
        cfg = validate_config(json.loads(json.dumps(raw, allow_nan=True)), source="fuzz.yaml")
    except ConfigError as err:
        message = str(err)
        # a field's own check says "field <path>: ..."; a cross-field check starts with the field it names
        named = re.match(r"fuzz\.yaml: (field )?([a-z_]+)[.:\[ ]", message)
        assert named and named.group(2) in ExperimentConfig.model_fields and "\n" not in message, message
        return
    fed, fail = cfg.federation, cfg.failures
    assert (
        fed.rounds > 0
        and 0 < fed.clients_per_round <= fed.num_clients
        and 1 <= fail.min_clients <= fed.clients_per_round
    )
    assert 0 <= fail.dropout_prob <= 1 and 0 <= fail.straggler_prob <= 1 and cfg.checkpoint.every >= 0
    assert cfg.train.lr > 0 and cfg.partition.alpha > 0 and 0 < cfg.data.test_fraction < 1
    assert (
        validate_config(yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json")))) == cfg
    )  # the resolved config round-trips


@pytest.mark.parametrize(
    "override, expected",
    [
        ("methods.0.rank=1000", "method fedit: rank 1000 > 32, the smaller side of the adapted matrix"),
        ("model.max_length=1000", "field model.max_length: 1000 > 512, the positions of minilm"),
        ("device=cuda", "field device: cuda requested but torch"),
    ],
)
def test_settings_the_model_or_machine_cannot_honour_exit_2_with_no_run_directory(tmp_path, capsys, override, expected):
    import torch

    if override.startswith("device") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = write_csv_experiment(tmp_path, ["fedit"])
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet", "--set", override]) == 2
    assert expected in one_line_error(capsys) and not out.exists()


def test_a_key_given_twice_in_a_config_is_refused(tmp_path, capsys):
    (tmp_path / "dup.yaml").write_text("train:\n  lr: 1.0e-3\n  batch_size: 8\n  lr: 5.0e-3\n")
    assert main(["run", str(tmp_path / "dup.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert f"config file {tmp_path / 'dup.yaml'} line 4: key 'lr' given twice; keep one" in one_line_error(capsys)


def test_methods_by_name_then_an_option_of_one_of_them(tmp_path):
    from fedsub.config import load_config

    config = write_csv_experiment(tmp_path, ["fedit"])
    cfg = load_config(config, ["methods=fedsvd,fedit", "methods.0.rank=4"])
    assert [(m.name, (m.model_extra or {}).get("rank")) for m in cfg.methods] == [("fedsvd", 4), ("fedit", None)]
