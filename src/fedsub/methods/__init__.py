"""Built-in methods; importing a module registers it."""

from fedsub.methods import fedavg_full, fedit, ffa_lora  # noqa: F401
