"""The one seeding module: pinned derivations (the values every run depends on), and negative seeds."""

import json

import numpy as np
from fedsub_fixtures import write_csv_experiment

from fedsub.core.seeding import client_seed, derive_rng, derive_seed, derive_seed64, mix_seed, torch_generator


def test_mix_seed_is_pinned_and_order_sensitive():
    # Pinned: changing the mix would silently change every client's random projector.
    assert mix_seed(0) == 7960286522194355700
    assert mix_seed(1, 2) == 327095433057816640
    assert mix_seed(2, 1) == 3379748236207159976


def test_seed_sequence_derivations_are_numpys_for_non_negative_seeds():
    """What the modules derived before the move (SeedSequence / default_rng over the parts)."""
    for parts in ([0], [5, 1], [0, 3, 2], [7, 1, 2, 0xFA17]):
        assert derive_seed(*parts) == int(np.random.SeedSequence(parts).generate_state(1)[0])
        assert derive_seed64(*parts) == int(np.random.SeedSequence(parts).generate_state(1, np.uint64)[0])
        assert np.array_equal(derive_rng(*parts).random(4), np.random.default_rng(parts).random(4))
    assert client_seed(0, 1, 2) == derive_seed(0, 1, 2) == 3884055042
    assert torch_generator(3).initial_seed() == 3


def test_negative_seeds_are_taken_modulo_two_to_the_64():
    assert derive_seed(-1, 4) == derive_seed(2**64 - 1, 4)
    assert np.array_equal(derive_rng(-3, 1).random(3), derive_rng(2**64 - 3, 1).random(3))
    assert mix_seed(-1) == mix_seed(2**64 - 1)
    assert client_seed(-1, 0, 0) != client_seed(1, 0, 0)


def test_a_run_with_a_negative_seed_runs(tmp_path):
    """`--set seed=-1` once passed validation and died in client sampling; now every derivation takes it
    (client sampling, faults, client seeds, GaLore projectors and sketches, AJIVE's draws)."""
    from fedsub.app.cli import main

    config = write_csv_experiment(tmp_path, ["fedit", {"name": "fedgalore", "rank": 2}])
    assert (
        main(
            [
                "run",
                str(config),
                "--set",
                "seed=-1",
                "--set",
                "federation.rounds=1",
                "--out",
                str(tmp_path / "run"),
                "--quiet",
            ]
        )
        == 0
    )
    for method in ("fedit", "fedgalore"):
        [record] = [json.loads(line) for line in (tmp_path / "run" / method / "metrics.jsonl").read_text().splitlines()]
        assert record["accuracy"] is not None and len(record["clients"]) == 2
