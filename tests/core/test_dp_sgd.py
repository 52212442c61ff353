"""Sample-level DP-SGD on the clients (issue 20 point 2): exact numbers, per-example gradients against
each example alone (every task kind), the clipped mean against Opacus' DPOptimizer, the degenerate case
(no clipping, no noise, the whole client as one batch) against plain local training, each client's
accountant, exact resume, refusals."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fedsub_fixtures import stop_at, strip_timing, task_config, tiny_config

from fedsub.core import dp_sgd, privacy
from fedsub.core.types import LocalDP
from fedsub.engines.simulation import Simulation
from fedsub.errors import ConfigError


def test_clip_and_noise_exact_numbers():
    grads = [torch.tensor([[3.0, 0.0], [0.3, 0.0]]), torch.tensor([[4.0], [0.4]])]  # example norms 5 and 0.5
    out = dp_sgd.clip_and_noise(grads, clip_norm=1.0, noise_multiplier=0.0, expected_batch=4.0,
                                generator=torch.Generator().manual_seed(0))  # fmt: skip
    # (3, 0, 4) clipped to (0.6, 0, 0.8), plus (0.3, 0, 0.4) within C; summed, over the expected 4 (not the 2 drawn)
    assert out[0].tolist() == pytest.approx([0.225, 0.0], abs=1e-6)
    assert out[1].tolist() == pytest.approx([0.3], abs=1e-6)


def test_the_noise_has_std_z_c_over_the_expected_batch():
    grads = [torch.zeros(1, 200_000)]
    out = dp_sgd.clip_and_noise(grads, 0.5, 1.3, 8.0, torch.Generator().manual_seed(1))
    assert float(out[0].std()) == pytest.approx(1.3 * 0.5 / 8, rel=0.01)


def test_poisson_batches_draw_each_example_with_probability_q():
    generator = torch.Generator().manual_seed(0)
    sizes = [len(dp_sgd.poisson_batch(torch.arange(100), 0.2, generator)) for _ in range(2000)]
    assert sum(sizes) / len(sizes) == pytest.approx(20, rel=0.02)
    assert min(sizes) < 12 and max(sizes) > 28  # the batch size varies: Poisson, not a fixed 20


def test_clipped_mean_equals_opacus_dp_optimizer():
    from opacus.optimizers import DPOptimizer

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(2))]
    samples = [torch.randn(5, 3, 2) * 2, torch.randn(5, 2)]
    for p, s in zip(params, samples):
        p.grad_sample = s.clone()
    optimizer = DPOptimizer(torch.optim.SGD(params, lr=0.0), noise_multiplier=0.0, max_grad_norm=1.5,
                            expected_batch_size=8)  # fmt: skip
    optimizer.pre_step()
    ours = dp_sgd.clip_and_noise(samples, 1.5, 0.0, 8.0, torch.Generator())
    for p, g in zip(params, ours):
        assert torch.allclose(p.grad, g, atol=1e-6)


def no_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("kind", ["classification", "multiple_choice", "generation", "image_classification"])
def test_per_example_gradients_are_each_example_alone(task_data, kind, tmp_path):
    cfg = task_config(kind, "fedit")
    sim = Simulation(cfg, cfg.methods[0], task_data(kind), tmp_path)
    ws = sim.workspace
    no_dropout(ws.model)  # each example's gradient a fixed number (Opacus needs train mode: eval() is no way)
    params = [p for p in ws.model.parameters() if p.requires_grad]
    index = torch.tensor([0, 3, 7])
    with dp_sgd.per_example_gradients(ws.model) as wrapped:
        ws.task.example_losses(wrapped, ws.train_data.batch(index, ws.device)).sum().backward()
        rows = dp_sgd.example_gradients(params, len(index))
    ws.model.zero_grad(set_to_none=True)
    assert not any(hasattr(p, "grad_sample") for p in params)  # the wrapper leaves nothing behind
    for m in ws.model.modules():  # as inside the wrapper: batch norm on its running statistics
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    for i, one in enumerate(index):
        ws.task.example_losses(ws.model, ws.train_data.batch(one.view(1), ws.device)).sum().backward()
        for p, g in zip(params, rows):
            assert torch.allclose(g[i], p.grad, atol=1e-5, rtol=1e-4)
        ws.model.zero_grad(set_to_none=True)


def test_no_clip_no_noise_whole_client_equals_plain_local_training(tiny_data, tmp_path):
    """The degenerate case: C far above every example's norm, z = 0, q = 1 (batch_size >= n): DP-SGD's
    gradient is the mean gradient of the client's examples, the plain step's with one full batch. (z = 0
    only here: the config refuses it, and even z = 1e-12 moves LoRA A, whose gradient is exactly 0 at
    B = 0, by Adam's lr x sign(noise).)"""
    cfg = tiny_config(train={"local_steps": 3, "batch_size": 6, "lr": 1e-2})
    sim = Simulation(cfg, cfg.methods[0], tiny_data, tmp_path)
    no_dropout(sim.workspace.model)  # the two paths visit the examples in other orders
    payload = sim.method.configure_train(sim.state, 0)
    plain = sim.client_context(0, 1)
    private = dataclasses.replace(plain, train=dataclasses.replace(plain.train, dp=LocalDP(1e6, 0.0)))
    ups = [sim.method.client_train(sim.workspace, payload, context) for context in (plain, private)]
    for name, t in ups[0].payload.tensors.items():
        # the gradients agree to 1e-8 (summation order); Adam's g / sqrt(v) turns that into up to 6e-6 in 3 steps
        assert torch.allclose(ups[1].payload.tensors[name], t, atol=2e-5), name
    assert ups[1].metrics["train_loss"] == pytest.approx(ups[0].metrics["train_loss"], abs=1e-6)


def test_each_client_accountant_and_exact_resume(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_config(federation={"num_clients": 3, "clients_per_round": 2, "rounds": 3},
                      privacy={"dp": {"mode": "local", "clip_norm": 1.0, "noise_multiplier": 0.8}})  # fmt: skip
    whole = Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / "whole").run()
    steps = {}
    for record in whole:
        for c in record["clients"]:
            steps[c] = steps.get(c, 0) + 2  # local_steps 2
        # 6 rows each, batch 4: q = 4/6 per step; the worst client is the one sampled most
        assert record["dp_epsilon"] == pytest.approx(privacy.epsilon(0.8, 4 / 6, max(steps.values()), 1e-5))
        assert record["dp_clients_spent"] == len(steps)
    undo = stop_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / "resumed").run()
    undo()
    resumed = Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / "resumed", resume=True).run()
    assert [strip_timing(r) for r in resumed] == [strip_timing(r) for r in whole]


@pytest.mark.parametrize(
    "privacy_dp, extra, message",
    [
        ({"mode": "local", "adaptive": True}, {}, "privacy.dp.adaptive"),
        (
            {"mode": "local"},
            {"train": {"local_steps": 2, "batch_size": 4, "max_grad_norm": 1.0}},
            "train.max_grad_norm",
        ),
        ({"mode": "local"}, {"methods": ["fedgalore"]}, "warmup_batches: 0"),
        ({"mode": "local", "noise_source": "dice"}, {}, "privacy.dp.noise_source"),
    ],
)
def test_local_dp_refusals_name_the_field(privacy_dp, extra, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(privacy={"dp": privacy_dp}, **extra)


def test_noise_comes_from_the_os_on_flower_unless_told():
    from fedsub.engines.setup import local_dp

    assert local_dp(tiny_config(privacy={"dp": {"mode": "local"}})) == LocalDP(1.0, 1.0, os_noise=False)
    flower = tiny_config(engine="flower", privacy={"dp": {"mode": "local"}})
    assert local_dp(flower).os_noise
    assert not local_dp(tiny_config(engine="flower", privacy={"dp": {"mode": "local", "noise_source": "run"}})).os_noise


def test_every_method_trains_under_local_dp(tiny_data, tmp_path):
    from fedsub.core.registry import method_names

    for name in method_names():
        spec = {"name": name, **({"warmup_batches": 0} if name == "fedgalore" else {})}
        cfg = tiny_config(methods=[spec], federation={"num_clients": 3, "clients_per_round": 3, "rounds": 1},
                          privacy={"dp": {"mode": "local", "noise_multiplier": 0.5}})  # fmt: skip
        record = Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / name).run()[0]
        assert record["aggregated"] == [0, 1, 2] and record["dp_epsilon"] > 0, name
