"""Built-in methods; importing a module registers it."""

from fedsub.methods import fedavg_full, fedit, fedsa_lora, ffa_lora  # noqa: F401
from fedsub.methods import fedsvd, flexlora, flora, subspace_reg, svd_redistribute  # noqa: F401
from fedsub.methods import fedftg, fedgalore  # noqa: F401
