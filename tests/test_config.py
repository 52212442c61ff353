import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedsub.config import check_method_options, config_to_dict, load_config, validate_config
from fedsub.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def error_of(raw):
    with pytest.raises(ConfigError) as info:
        check_method_options(validate_config(raw))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_are_valid():
    cfg = validate_config({})
    assert cfg.methods[0].name == "fedit" and cfg.methods[0].options.rank == 8


def test_unknown_key_names_the_field():
    assert "field train.lrr: unknown key" in error_of({"train": {"lrr": 0.1}})


def test_wrong_type_names_the_field():
    assert "field federation.rounds" in error_of({"federation": {"rounds": "many"}})


def test_unknown_method_lists_the_known_ones():
    message = error_of({"methods": ["fedsgd"]})
    assert "unknown method 'fedsgd'" in message and "fedit" in message


def test_method_option_errors_name_the_method():
    assert "config: field methods[fedit].rnak: unknown key" in error_of({"methods": [{"name": "fedit", "rnak": 4}]})
    assert "methods[fedit].rank" in error_of({"methods": [{"name": "fedit", "rank": 0}]})
    assert "field methods[ffa_lora].rank" in error_of({"methods": ["fedit", {"name": "ffa_lora", "rank": -1}]})


def test_a_bad_option_fails_when_read_naming_the_field():
    cfg = validate_config({"methods": [{"name": "fedit", "rank": 0}]})  # options are the method's to check
    with pytest.raises(ConfigError, match=r"^field methods\[fedit\]\.rank: Input should be greater than 0$"):
        cfg.methods[0].options


def test_validating_a_config_imports_no_method_nor_torch():
    """Options are resolved by the registry when read, importing that method's module only."""
    code = (
        "import sys; from fedsub.config import validate_config\n"
        "cfg = validate_config({'methods': ['fedit', 'fedgalore']})\n"
        "print(sorted(m for m in sys.modules if m.startswith(('fedsub.methods', 'torch'))))\n"
        "cfg.methods[0].options\n"
        "print(sorted(m for m in sys.modules if m.startswith('fedsub.methods.')))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    before, after = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.splitlines()
    assert before == "[]"
    assert (
        "'fedsub.methods.fedit'" in after and "fedgalore" not in after
    )  # fedit's module and what it needs, not GaLore


def test_alpha_must_be_positive():
    assert "field partition.alpha" in error_of({"partition": {"alpha": 0}})


def test_more_clients_per_round_than_clients():
    message = error_of({"federation": {"num_clients": 4, "clients_per_round": 5}})
    assert "federation" in message and "exceeds num_clients" in message


def test_duplicate_methods_rejected():
    assert "each method once" in error_of({"methods": ["fedit", "fedit"]})


def test_overrides_apply_to_sections_and_method_entries(tmp_path):
    path = write(tmp_path, "methods: [fedit, {name: ffa_lora, rank: 4}]\n")
    cfg = load_config(path, ["train.lr=1e-4", "methods.0.rank=16", "methods.1.lr=0.01", "federation.rounds=3"])
    assert cfg.train.lr == 1e-4 and cfg.federation.rounds == 3
    assert cfg.methods[0].options.rank == 16 and cfg.methods[1].options.rank == 4 and cfg.methods[1].lr == 0.01


def test_methods_override_as_comma_list(tmp_path):
    cfg = load_config(write(tmp_path, "name: x\n"), ["methods=fedit,ffa_lora"])
    assert [m.name for m in cfg.methods] == ["fedit", "ffa_lora"]


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [1,\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n"))
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(write(tmp_path, "name: x\n"), ["train.lr"])


def test_local_epochs_replaces_local_steps():
    cfg = validate_config({"train": {"local_epochs": 1}})
    assert cfg.train.local_steps is None and cfg.train.local_epochs == 1


def test_labels_let_variants_of_one_method_share_a_run():
    cfg = validate_config(
        {"methods": [{"name": "fedit", "label": "fedit_r4", "rank": 4}, {"name": "fedit", "rank": 8}]}
    )
    assert [m.key for m in cfg.methods] == ["fedit_r4", "fedit"]
    assert config_to_dict(cfg)["methods"][0]["label"] == "fedit_r4"
    with pytest.raises(ConfigError, match="distinct label"):
        validate_config({"methods": [{"name": "fedit", "rank": 4}, {"name": "fedit", "rank": 8}]})
