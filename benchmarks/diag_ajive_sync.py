"""Why does FedGaLore's AJIVE sync find (almost) no joint structure? Look inside one run.

Runs fedgalore on the grid workload for a few rounds and records, for every AJIVE call (one per
GaLore-managed matrix per round): the signal ranks the scree elbow picked, the top squared singular
values of the stacked signal bases M, the Wedin and random-direction cutoffs, and the joint rank;
plus, independent of AJIVE's thresholds, the mean pairwise cosine between clients' top left singular
vectors of their centred moments (1 = the clients' dominant direction is shared).

    python benchmarks/diag_ajive_sync.py --alpha 0.1 --rounds 3 [--signal-rank 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
from pathlib import Path

import torch

import fedsub.linalg.moments as moments_module
from fedsub.config import load_config

GRID = Path(__file__).resolve().parents[1] / "configs" / "fedgalore_grid.yaml"


def top_direction_cosines(moments: list[torch.Tensor]) -> float:
    """Mean |cos| between the clients' leading left singular vectors of their centred moments."""
    tops = []
    for v in moments:
        centred = (v - v.mean(dim=0)).double()
        tops.append(torch.linalg.svd(centred, full_matrices=False).U[:, 0])
    return statistics.mean(abs(float(a @ b)) for a, b in itertools.combinations(tops, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--signal-rank", type=int, default=None, help="fix AJIVE's per-block signal rank")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/diag_ajive_sync.json"))
    args = parser.parse_args()

    from fedsub.engines.setup import prepare_data
    from fedsub.engines.simulation import Simulation

    overrides = [f"partition.alpha={args.alpha}", f"federation.rounds={args.rounds}", "methods=fedgalore"]
    cfg = load_config(GRID, overrides)
    spec = cfg.methods[0]
    spec.lr = 2.0e-4
    if args.signal_rank:
        spec.ajive_signal_rank = args.signal_rank  # on the spec: spec.options is re-read from it
    calls: list[dict] = []
    original = moments_module.sync_second_moments

    def recording_sync(moments, weights, **kwargs):
        v_hat, result = original(moments, weights, **kwargs)
        record = {"shape": list(moments[0].shape), "top_direction_cosine": top_direction_cosines(moments)}
        if result is not None:
            record.update(
                joint_rank=result.joint_rank,
                signal_ranks=result.signal_ranks,
                joint_sv2_top=[round(float(s) ** 2, 4) for s in result.joint_singular_values[:4]],
                wedin_bound=result.wedin_bound,
                random_direction_bound=result.random_direction_bound,
            )
        calls.append(record)
        return v_hat, result

    moments_module.sync_second_moments = recording_sync
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(cfg, Path(tmp))
        simulation = Simulation(cfg, spec, data, Path(tmp) / "fedgalore")
        per_round = []
        for round_index in range(args.rounds):
            start = len(calls)
            record = simulation.run_round(round_index)
            round_calls = calls[start:]
            per_round.append(
                {
                    "round": round_index + 1,
                    "accuracy": record["accuracy"],
                    "joint_rank_mean": statistics.mean(c.get("joint_rank", 0) for c in round_calls),
                    "signal_rank_mean": statistics.mean(
                        statistics.mean(c.get("signal_ranks", [0])) for c in round_calls
                    ),
                    "top_direction_cosine_mean": statistics.mean(c["top_direction_cosine"] for c in round_calls),
                    "calls": round_calls,
                }
            )
            summary = {k: v for k, v in per_round[-1].items() if k != "calls"}
            print(json.dumps(summary), flush=True)
            print("  first matrices:", json.dumps(round_calls[:3]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"alpha": args.alpha, "signal_rank": args.signal_rank, "rounds": per_round}, indent=1)
    )


if __name__ == "__main__":
    main()
