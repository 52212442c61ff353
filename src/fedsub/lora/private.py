"""Central DP for the LoRA methods whose server takes an SVD of the clients' products (FlexLoRA,
svd_redistribute; config.DP_PRODUCTS): the noise goes into the sum of the products B_k A_k, before
the SVD, so that the SVD is post-processing of the private release.

Per client, its change is taken where the server aggregates: each LoRA layer's product B_k A_k minus
the product it was sent (float64, unscaled), and every other tensor (the head) minus what it was
sent. core/privacy.private_mean clips each client's whole change, sums, adds the noise and divides by
the expected clients. The release is the mean of the sent products plus that noisy mean change, handed
to the method as one update whose factors multiply to it (full-rank SVD factors B = U S, A = Vh), so
the method's own aggregate (stack, rank-r SVD, redistribution) runs unchanged on it. Without clipping
or noise and with equal client sizes this is the method's own aggregate (tested).
"""

from __future__ import annotations

from typing import Sequence

import torch

from fedsub.core import privacy
from fedsub.core.types import ClientUpdate, Payload, Tensors
from fedsub.lora.names import LoraKeys, is_lora, lora_layers


def product_space(tensors: Tensors, layers: dict[str, LoraKeys]) -> Tensors:
    """Each LoRA layer's B A (float64, unscaled) under the layer's prefix; every other tensor as it is."""
    out = {n: t.double() for n, t in tensors.items() if not is_lora(n)}
    for prefix, keys in layers.items():
        out[prefix] = tensors[keys.b].double() @ tensors[keys.a].double()
    return out


def as_factors(products: Tensors, layers: dict[str, LoraKeys], like: Tensors) -> Tensors:
    """Back to the method's tensors: each layer's product as B = U S, A = Vh (all its components, in
    the dtype `like` holds the layer in), every other tensor in its own dtype."""
    out = {n: t.to(like[n].dtype) for n, t in products.items() if n not in layers}
    for prefix, keys in layers.items():
        u, s, vh = torch.linalg.svd(products[prefix], full_matrices=False)
        out[keys.b], out[keys.a] = (u * s).to(like[keys.b].dtype), vh.to(like[keys.a].dtype)
    return out


def product_release(
    updates: Sequence[ClientUpdate], sent: dict[int, Payload], clip_norm: float, z: float, expected_clients: int,
    generator: torch.Generator, **adaptive,
) -> privacy.Release:  # fmt: skip
    """The round's DP release in product space (module docstring); `sent[k]` is what client k got
    (FlexLoRA sends each client its own rank's slice)."""
    layers = lora_layers(updates[0].payload.tensors)
    changes, base = [], {}
    for u in updates:
        given = product_space(sent[u.client_id].tensors, layers)
        mine = product_space(u.payload.tensors, layers)
        changes.append(ClientUpdate(u.client_id, Payload({n: mine[n] - given[n] for n in mine}), 1, {}))
        for n, t in given.items():
            base[n] = base.get(n, 0.0) + t / len(updates)  # what the clients started from: public
    zeros = {n: torch.zeros_like(t) for n, t in base.items()}
    release = privacy.private_mean(changes, zeros, clip_norm, z, expected_clients, generator, **adaptive)
    products = {n: base[n] + t for n, t in release.update.payload.tensors.items()}
    tensors = as_factors(products, layers, updates[0].payload.tensors)
    return privacy.Release(
        ClientUpdate(updates[0].client_id, Payload(tensors), 1, {}),
        release.clip_norm, release.next_clip_norm, release.clipped_share,
    )  # fmt: skip
