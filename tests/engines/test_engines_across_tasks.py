"""The three issues meet: every task runs on Flower's in-process grid with the simulator's metrics,
and a run of every task resumes from its checkpoint to the uninterrupted run's metrics."""

from __future__ import annotations

import pytest
from fedsub_fixtures import TASK_SECTIONS, assert_close, strip_timing, task_config

from fedsub.engines.simulation import Simulation

TASKS = [kind for kind in TASK_SECTIONS if kind != "classification"]  # classification: test_flower_grid, test_resume


def config(kind: str, method: str, **extra):
    cfg = task_config(kind, method)
    return cfg.model_copy(update=extra)


@pytest.mark.parametrize("kind", TASKS)
def test_flower_grid_gives_the_simulator_metrics_on_every_task(task_data, tmp_path, kind):
    pytest.importorskip("flwr")
    from fedsub.engines.flower.engine import FlowerLocal

    cfg = config(kind, "fedgalore")
    sim = Simulation(cfg, cfg.methods[0], task_data(kind), tmp_path / "sim").run()
    flo = FlowerLocal(cfg, cfg.methods[0], task_data(kind), tmp_path / "flower").run()
    assert len(sim) == len(flo) == cfg.federation.rounds
    for a, b in zip(sim, flo):
        assert_close(strip_timing(a), strip_timing(b), f"{kind} round {a['round']}")


@pytest.mark.parametrize("kind", TASKS)
def test_every_task_resumes_to_the_uninterrupted_metrics(task_data, tmp_path, monkeypatch, kind):
    cfg = config(kind, "fedit")
    cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"rounds": 3})})
    reference = Simulation(cfg, cfg.methods[0], task_data(kind), tmp_path / "ref").run()
    original = Simulation.run_round

    def interrupt_at_round_3(self, index, on_client=None):
        if index == 2:
            raise KeyboardInterrupt
        return original(self, index, on_client)

    monkeypatch.setattr(Simulation, "run_round", interrupt_at_round_3)
    with pytest.raises(KeyboardInterrupt):
        Simulation(cfg, cfg.methods[0], task_data(kind), tmp_path / "cut").run()
    monkeypatch.setattr(Simulation, "run_round", original)
    resumed = Simulation(cfg, cfg.methods[0], task_data(kind), tmp_path / "cut", resume=True).run()
    assert len(resumed) == 3
    for a, b in zip(reference, resumed):
        assert_close(strip_timing(a), strip_timing(b), f"{kind} round {a['round']}")
