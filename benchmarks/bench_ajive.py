"""Benchmark: fedsub.linalg.ajive wall time (Feng, Jiang, Hannig & Marron 2018).

    .venv/bin/python benchmarks/bench_ajive.py [--device cpu|cuda] [--dtype float32|bfloat16] [--repeats 5]
        [--samples 1000] [--threads N] [--quick] [--out FILE]

K = 10 and 50 blocks of 768 x 8 and 4096 x 16 (the shapes of FedGaLore's projected second
moments), synthetic: a joint rank-2 score space, rank-2 individual parts per block, noise. Two
signal-rank settings: `elbow` (the default scree elbow; picks 4 here) and `max` (d - 1 per block,
the most expensive: R = sum r_k sets the random-direction cost). Each case is timed `cold` (the
random-direction samples, cached per (n, ranks, samples, seed, device), cleared first) and `warm`
(cache hit, as in later rounds of a run with stable ranks); 1000 draws per bound unless told.
Reported: the median over repeats. Target: K = 10 blocks of 768 x 8 in under 1 s (cold, elbow).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import DTYPES, add_device_args, check_device, emit, machine_info

from fedsub.linalg import ajive
from fedsub.linalg.ajive_bounds import _random_direction_samples

CASES = [(10, 768, 8), (10, 4096, 16), (50, 768, 8), (50, 4096, 16)]
TARGET_S = 1.0


def make_blocks(
    k: int, n: int, d: int, device: str, seed: int = 0, dtype: torch.dtype = torch.float32
) -> list[torch.Tensor]:
    """K blocks n x d: joint scores (rank 2) + individual scores (rank 2 each) + N(0, 0.3^2)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2 + 2 * k, generator=g, dtype=torch.float64)
    scores = torch.linalg.qr(z - z.mean(0)).Q
    values = torch.tensor([40.0, 30.0, 25.0, 20.0], dtype=torch.float64)
    blocks = []
    for i in range(k):
        u = torch.cat([scores[:, :2], scores[:, 2 + 2 * i : 4 + 2 * i]], dim=1)
        v = torch.linalg.qr(torch.randn(d, 4, generator=g, dtype=torch.float64)).Q
        x = (u * values) @ v.T + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
        blocks.append(x.to(device=device, dtype=dtype))
    return blocks


def _timed(fn, device: str) -> tuple[float, object]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def run_case(k: int, n: int, d: int, ranks: str, args: argparse.Namespace) -> dict:
    blocks = make_blocks(k, n, d, args.device, dtype=DTYPES[args.dtype])
    kwargs = dict(n_wedin_samples=args.samples, n_randdir_samples=args.samples)
    if ranks == "max":
        kwargs["signal_ranks"] = d - 1
    cold, warm = [], []
    for _ in range(args.repeats):
        _random_direction_samples.cache_clear()
        t_cold, res = _timed(lambda: ajive(blocks, **kwargs), args.device)
        t_warm, _ = _timed(lambda: ajive(blocks, **kwargs), args.device)
        cold.append(t_cold)
        warm.append(t_warm)
    return {
        "K": k, "n": n, "d": d, "signal_ranks": ranks, "R": sum(res.signal_ranks),
        "joint_rank": res.joint_rank, "wedin_bound": res.wedin_bound,
        "random_direction_bound": res.random_direction_bound,
        "cold_s_median": statistics.median(cold), "warm_s_median": statistics.median(warm),
        "cold_s": cold, "warm_s": warm,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_args(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="elbow ranks only, K = 10 only")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    ajive(make_blocks(2, 64, 4, args.device), n_wedin_samples=10, n_randdir_samples=10)  # warm-up
    machine = machine_info(args.device, args.dtype)
    results = []
    for k, n, d in CASES:
        if args.quick and k != 10:
            continue
        for ranks in ("elbow",) if args.quick else ("elbow", "max"):
            results.append(run_case(k, n, d, ranks, args))
            print(json.dumps({key: results[-1][key] for key in ("K", "n", "d", "signal_ranks",
                  "cold_s_median", "warm_s_median")}), flush=True)  # fmt: skip
    headline = next(r for r in results if (r["K"], r["n"], r["signal_ranks"]) == (10, 768, "elbow"))
    report = {
        "benchmark": "ajive", "machine": machine,
        "samples_per_bound": args.samples,
        "repeats": args.repeats, "target_K10_768x8_s": TARGET_S,
        "meets_target": headline["cold_s_median"] < TARGET_S, "results": results,
    }  # fmt: skip
    emit(report, args.out)


if __name__ == "__main__":
    main()
