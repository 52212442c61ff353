"""Client optimizers: GaLore-AdamW with exportable state and its projector functions."""

from fedsub.optim.galore import GaLoreAdamW

__all__ = ["GaLoreAdamW"]
