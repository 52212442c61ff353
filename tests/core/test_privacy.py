"""Client-level DP-FedAvg (issue 20 point 1): exact numbers, the noise's scale, the accountant against
Opacus' own, the degenerate case (no clipping, no noise) against plain FedAvg, exact resume, refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fedsub_fixtures import stop_at, strip_timing, tiny_config, write_csv_experiment

from fedsub.core import privacy
from fedsub.core.types import ClientUpdate, Payload
from fedsub.errors import ConfigError
from fedsub.reporting.report import read_metrics as records


def update(client, values):
    return ClientUpdate(client, Payload({"w": torch.tensor(values)}), 6)


def test_clipped_sum_over_the_expected_clients_exact_numbers():
    sent = {"w": torch.zeros(2)}
    updates = [update(0, [3.0, 4.0]), update(1, [0.6, 0.8])]  # change norms 5 and 1
    release = privacy.private_mean(updates, sent, clip_norm=2.0, z=0.0, expected_clients=4,
                                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    # (3, 4) clipped to (1.2, 1.6), plus (0.6, 0.8), summed, over the 4 clients expected (not the 2 that came)
    assert release.update.payload.tensors["w"].tolist() == pytest.approx([0.45, 0.6])
    assert release.update.num_examples == 1 and release.clipped_share == 0.5
    assert release.clip_norm == release.next_clip_norm == 2.0


def test_the_noise_on_the_mean_has_std_z_c_over_m():
    sent = {"w": torch.zeros(200_000)}
    updates = [ClientUpdate(0, Payload({"w": torch.zeros(200_000)}), 1)]
    release = privacy.private_mean(updates, sent, 0.5, 1.3, 4, torch.Generator().manual_seed(1))
    assert float(release.update.payload.tensors["w"].std()) == pytest.approx(1.3 * 0.5 / 4, rel=0.01)


def test_adaptive_clipping_follows_the_quantile_and_splits_the_noise():
    assert privacy.sum_noise_multiplier(1.0, True, 100) == pytest.approx((1 - 1 / 100) ** -0.5)  # sigma_b = 5
    assert privacy.sum_noise_multiplier(1.0, False, 100) == 1.0
    with pytest.raises(ValueError, match="too large for adaptive clipping"):
        privacy.sum_noise_multiplier(1.0, True, 2)  # 2 sigma_b = 0.2: the count alone spends more than z = 1
    sent = {"w": torch.zeros(3)}
    updates = [update(k, [0.1 * k, 0.0, 0.0]) for k in range(1, 5)]  # all within C = 1: share 1 > 0.5
    gen = torch.Generator().manual_seed(7)
    release = privacy.private_mean(updates, sent, 1.0, 1.0, 400, gen, adaptive=True, target_quantile=0.5, clip_lr=0.2)
    replay = torch.Generator().manual_seed(7)
    torch.randn(3, generator=replay, dtype=torch.float64)  # the sum's noise
    share = (4 + float(torch.randn((), generator=replay, dtype=torch.float64)) * 400 / 20) / 400
    assert release.next_clip_norm == pytest.approx(math.exp(-0.2 * (share - 0.5)))


def test_epsilon_is_opacus_rdp_accountant_stepped_round_by_round():
    from opacus.accountants import RDPAccountant

    reference = RDPAccountant()
    for rounds in range(1, 6):
        reference.step(noise_multiplier=1.1, sample_rate=0.25)
        assert privacy.epsilon(1.1, 0.25, rounds, 1e-5) == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-12)
    assert privacy.epsilon(1.1, 0.25, 0, 1e-5) == 0.0


@pytest.mark.parametrize("name", ["fedit", "fedsvd", "flexlora", "svd_redistribute", "subspace_reg"])
def test_without_clipping_or_noise_dp_fedavg_is_fedavg(tiny_data, tmp_path, name):
    """The degenerate case: full participation, equal client sizes, C = 1e3 (above every change), noise
    std z C = 1e-9: the same run as the plain method (fedsvd: its SVD of the noisy mean B is the plain
    one's of the mean B; flexlora, svd_redistribute: their SVD of the noisy mean product is the plain
    one's of the mean product, so the layers' products agree, the factors up to each component's sign)."""
    from fedsub.engines.simulation import Simulation
    from fedsub.lora.names import lora_layers

    plain = tiny_config(methods=[name])
    private = tiny_config(
        methods=[name], privacy={"dp": {"mode": "central", "clip_norm": 1e3, "noise_multiplier": 1e-12}}
    )
    a = Simulation(plain, plain.methods[0], tiny_data, tmp_path / "plain")
    b = Simulation(private, private.methods[0], tiny_data, tmp_path / "dp")
    for x, y in zip(a.run(), b.run()):
        assert x["accuracy"] == y["accuracy"] and y["dp_released"] and y["dp_clipped_share"] == 0.0
        assert x["test_loss"] == pytest.approx(y["test_loss"], rel=1e-5)
    layers = lora_layers(a.state.tensors)
    products = {k.b for k in layers.values()} | {k.a for k in layers.values()}
    for n, t in a.state.tensors.items():
        if n not in products:
            assert torch.allclose(b.state.tensors[n], t, atol=1e-5), n
    for k in layers.values():
        mine, theirs = (s.state.tensors[k.b] @ s.state.tensors[k.a] for s in (b, a))
        assert torch.allclose(mine, theirs, atol=1e-5), k.prefix


def test_a_private_run_logs_epsilon_and_resumes_exactly(tmp_path, monkeypatch):
    from fedsub.app.run import run_experiment
    from fedsub.config import load_config

    dp = {"dp": {"mode": "central", "clip_norm": 0.5, "noise_multiplier": 0.15, "adaptive": True}}
    config = write_csv_experiment(
        tmp_path, ["fedit"], privacy=dp, federation={"num_clients": 3, "clients_per_round": 2, "rounds": 3}
    )
    run_experiment(load_config(config), tmp_path / "ref", quiet=True)
    reference = records(tmp_path / "ref" / "fedit" / "metrics.jsonl")
    for t, record in enumerate(reference, start=1):
        assert record["dp_epsilon"] == privacy.epsilon(0.15, 2 / 3, t, 1e-5)
    assert reference[1]["dp_clip_norm"] == reference[0]["dp_next_clip_norm"] != reference[0]["dp_clip_norm"]
    summary = json.loads((tmp_path / "ref" / "fedit" / "summary.json").read_text())
    assert summary["final_dp_epsilon"] == reference[-1]["dp_epsilon"]
    assert "| epsilon |" in (tmp_path / "ref" / "results.md").read_text()
    undo = stop_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config(config), tmp_path / "cut", quiet=True)
    undo()
    run_experiment(load_config(config), tmp_path / "cut", quiet=True, resume=True)
    resumed = records(tmp_path / "cut" / "fedit" / "metrics.jsonl")
    assert [strip_timing(r) for r in resumed] == [strip_timing(r) for r in reference]


@pytest.mark.parametrize(
    "methods, overrides, message",
    [
        (["flora"], [], "privacy.dp: central DP cannot serve method flora: FLoRA stacks each client's factors"),
        (["fedgalore"], [], "its server syncs every client's own V through AJIVE"),
        (["fedit"], ["aggregation.rule=median"], "privacy.dp: central DP with aggregation.rule median"),
        (["fedit"], ["privacy.dp.adaptive=true"], "privacy.dp.noise_multiplier: 1 is too large for adaptive"),
        (["fedit"], ["privacy.dp.delta=1.5"], "privacy.dp.delta"),
        (["fedit"], ["privacy.dp.noise_multiplier=0"], "privacy.dp.noise_multiplier"),
        (["fedit"], ["privacy.dp.clip_norm=-1"], "privacy.dp.clip_norm"),
    ],
)
def test_dp_settings_that_cannot_work_are_refused_naming_the_field(tmp_path, methods, overrides, message):
    from fedsub.config import load_config

    config = write_csv_experiment(tmp_path, methods)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(config, ["privacy.dp.mode=central", *overrides])


def test_off_means_off_even_as_yaml_reads_it(tmp_path):
    from fedsub.config import load_config

    config = write_csv_experiment(tmp_path, ["fedit"])
    assert load_config(config, ["privacy.dp.mode=off"]).privacy.dp.mode == "off"  # YAML 1.1: a bare off is false


def test_product_space_round_trip_and_release_exact_numbers():
    """A layer's product B A and back (full-rank SVD factors multiply to it); the release is the mean
    of the sent products plus the clipped, noised mean change of the products."""
    from fedsub.lora.names import lora_layers
    from fedsub.lora.private import as_factors, product_release, product_space

    b_name, a_name = "m.lora_B.default.weight", "m.lora_A.default.weight"
    sent = {b_name: torch.zeros(2, 1), a_name: torch.tensor([[1.0, 0.0]]), "head": torch.zeros(1)}
    layers = lora_layers(sent)
    up0 = {b_name: torch.tensor([[3.0], [0.0]]), a_name: torch.tensor([[1.0, 0.0]]), "head": torch.tensor([4.0])}
    up1 = {b_name: torch.tensor([[0.0], [0.6]]), a_name: torch.tensor([[1.0, 0.0]]), "head": torch.tensor([0.8])}
    back = as_factors(product_space(up0, layers), layers, up0)
    assert torch.allclose(back[b_name] @ back[a_name], up0[b_name] @ up0[a_name], atol=1e-6)
    updates = [ClientUpdate(0, Payload(up0), 6), ClientUpdate(1, Payload(up1), 6)]
    release = product_release(updates, {0: Payload(sent), 1: Payload(sent)}, 2.0, 0.0, 4,
                              torch.Generator().manual_seed(0))  # fmt: skip
    # client 0's change: product [[3, 0], [0, 0]] and head 4, norm 5, clipped to 2 (x 0.4); client 1's:
    # [[0, 0], [0.6, 0]] and 0.8, norm 1, kept; summed and over the 4 clients expected
    got = release.update.payload.tensors
    assert (got[b_name] @ got[a_name]).flatten().tolist() == pytest.approx([0.3, 0.0, 0.15, 0.0], abs=1e-6)
    assert got["head"].tolist() == pytest.approx([(1.6 + 0.8) / 4], abs=1e-6)
    assert release.clipped_share == 0.5
