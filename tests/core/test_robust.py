"""Robust aggregation (issue 19 point 3): exact numbers for each rule on hand-sized tensors, the
relative-norm screen, and a poisoned client against the default protection."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fedsub_fixtures import write_csv_experiment

from fedsub.core import robust
from fedsub.core.types import ClientUpdate, Payload
from fedsub.engines.failures import relative_outliers


def update(client, values, n=1):
    return ClientUpdate(client, Payload({"w": torch.tensor(values, dtype=torch.float32)}), n)


def test_median_is_coordinatewise_and_averages_the_middle_pair():
    odd = robust.median([update(0, [1.0, 2.0, 3.0]), update(1, [4.0, 5.0, 6.0]), update(2, [100.0, -1.0, 0.0], n=7)])
    assert odd.payload.tensors["w"].tolist() == [4.0, 2.0, 3.0] and odd.num_examples == 9
    even = robust.median([update(k, [v]) for k, v in enumerate([1.0, 2.0, 10.0, 1e6])])
    assert even.payload.tensors["w"].tolist() == [6.0]  # (2 + 10) / 2, the outlier ignored


def test_trimmed_mean_drops_floor_beta_k_at_each_end():
    updates = [update(k, [v, -v]) for k, v in enumerate([1.0, 2.0, 3.0, 1e6])]
    assert robust.trimmed_mean(updates, 0.25).payload.tensors["w"].tolist() == [2.5, -2.5]  # mean of 2, 3
    assert robust.trimmed_mean(updates, 0.0).payload.tensors["w"].tolist() == pytest.approx([250001.5, -250001.5])


def test_norm_clip_scales_each_change_to_the_bound():
    sent = {0: {"w": torch.tensor([1.0, 1.0])}, 1: {"w": torch.tensor([1.0, 1.0])}}
    updates = [update(0, [4.0, 5.0]), update(1, [1.6, 1.8])]  # changes (3, 4): norm 5; (0.6, 0.8): norm 1
    clipped = robust.norm_clip(updates, sent, 2.0)
    assert clipped[0].payload.tensors["w"].tolist() == pytest.approx([1 + 1.2, 1 + 1.6])  # scaled by 2/5
    assert clipped[1].payload.tensors["w"].tolist() == pytest.approx([1.6, 1.8])  # within the bound: untouched
    assert robust.clip_bound([5.0, 1.0, 3.0], None, 0.5) == 3.0 and robust.clip_bound([5.0], 2.0, 0.5) == 2.0
    assert robust.change_norm(updates[0], sent[0]) == 5.0
    fresh = robust.change(update(0, [3.0, 4.0]), {})  # a tensor it was not sent: the upload is the change
    assert fresh["w"].tolist() == [3.0, 4.0]


def test_the_relative_screen_rejects_only_the_outlier():
    sent = {k: Payload({"w": torch.zeros(2)}) for k in range(4)}
    updates = [update(0, [1.0, 0.0]), update(1, [0.0, 2.0]), update(2, [1.5, 0.0]), update(3, [1e6, 0.0])]
    kept, outliers = relative_outliers(updates, sent, 10.0)
    assert [u.client_id for u in kept] == [0, 1, 2]
    assert outliers == [
        {"client": 3, "reason": "change norm 1e+06 > 10 x the round's median 1.75 (validation.max_norm_relative)"}
    ]


def final(run, method="fedit"):
    return [json.loads(line) for line in (run / method / "metrics.jsonl").read_text().splitlines()][-1]


@pytest.fixture(scope="module")
def poisoned_runs(tmp_path_factory):
    """4 clients, all every round; client 2 sends its change x 1e6: honest, default protection, none, norm_clip."""
    from fedsub.app.run import run_experiment
    from fedsub.config import load_config

    tmp = tmp_path_factory.mktemp("poison")
    config = write_csv_experiment(
        tmp, ["fedit"], federation={"num_clients": 4, "clients_per_round": 4, "rounds": 3},
        partition={"scheme": "iid", "min_partition_size": 3},
    )  # fmt: skip
    attack = ["failures.poisoned=[2]"]
    cases = {
        "honest": [],
        "default": attack,
        "unprotected": [*attack, "validation.max_norm_relative=null"],
        "norm_clip": [*attack, "validation.max_norm_relative=null", "aggregation.rule=norm_clip"],
        "median": [*attack, "validation.max_norm_relative=null", "aggregation.rule=median"],
    }
    for name, overrides in cases.items():
        run_experiment(load_config(config, overrides), tmp / name, quiet=True)
    return tmp


def test_one_poisoned_client_of_four_cannot_move_the_model_by_default(poisoned_runs):
    honest, default = final(poisoned_runs / "honest"), final(poisoned_runs / "default")
    assert [r["client"] for r in default["rejected"]] == [2] and "validation.max_norm_relative" in default["rejected"][
        0
    ]["reason"]
    assert default["aggregated"] == [0, 1, 3]
    assert abs(default["accuracy"] - honest["accuracy"]) <= 0.12  # 9 test rows: one row is 0.11
    unprotected = final(poisoned_runs / "unprotected")
    assert unprotected["aggregated"] == [0, 1, 2, 3]
    assert not math.isfinite(unprotected["test_loss"]) or unprotected["test_loss"] > 10 * honest["test_loss"]


@pytest.mark.parametrize("rule", ["norm_clip", "median"])
def test_robust_rules_keep_the_poisoned_run_near_the_honest_one(poisoned_runs, rule):
    honest, robust_run = final(poisoned_runs / "honest"), final(poisoned_runs / rule)
    assert robust_run["aggregated"] == [0, 1, 2, 3]  # nothing rejected: the rule absorbs the attack
    assert math.isfinite(robust_run["test_loss"]) and robust_run["test_loss"] < 2 * honest["test_loss"]


def test_a_rule_a_method_cannot_serve_is_refused_in_one_line(tmp_path):
    from fedsub.config import load_config
    from fedsub.errors import ConfigError

    config = write_csv_experiment(tmp_path, ["fedit", "flora"])
    with pytest.raises(ConfigError, match="aggregation.rule: median cannot serve method flora"):
        load_config(config, ["aggregation.rule=median"])
    with pytest.raises(ConfigError, match="failures.poisoned: client 9 is not one of the 3"):
        load_config(config, ["failures.poisoned=[9]"])


def test_krum_keeps_the_update_closest_to_its_neighbours_and_multi_krum_the_best_m():
    sent = {k: {"w": torch.zeros(1)} for k in range(5)}
    updates = [update(k, [v]) for k, v in enumerate([1.0, 1.1, 0.9, 1.2, 50.0])]
    # f = 1: each score sums the squared distances to its n - f - 2 = 2 nearest others
    scores = robust.krum_scores(updates, sent, 1)
    assert scores == pytest.approx([0.01 + 0.01, 0.01 + 0.01, 0.01 + 0.04, 0.01 + 0.04, 48.8**2 + 48.9**2])
    assert [u.client_id for u in robust.krum(updates, sent, 1)] == [0]  # ties to the lower index
    assert [u.client_id for u in robust.krum(updates, sent, 1, keep=4)] == [0, 1, 2, 3]  # the outlier left out
