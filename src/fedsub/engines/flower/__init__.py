"""`engine: flower`: the same Method objects as Flower ServerApp / ClientApps (optional extra
`fedsub[flower]`). This package is the only place that imports flwr; importing it without flwr
installed is fine, `flower_engine` then says what to install."""

from __future__ import annotations

from pathlib import Path

from fedsub.config import ExperimentConfig, MethodSpec
from fedsub.errors import ConfigError


def require_flower() -> None:
    try:
        import flwr  # noqa: F401  (late: an optional extra; this package imports without it)
    except ImportError:
        raise ConfigError(
            "field engine: 'flower' needs Flower; pip install 'fedsub[flower]' (flwr==1.41.0), or set engine: "
            "simulation"
        ) from None


def flower_engine(cfg: ExperimentConfig, spec: MethodSpec, data, method_dir: Path, resume: bool = False):
    """The engine (fedsub.engines.engine.Engine) for one method: the in-process grid, or a
    submission to the SuperLink at flower.superlink."""
    require_flower()
    if cfg.flower.superlink:
        from fedsub.engines.flower.deploy import FlowerDeployment  # late: imports flwr (optional)

        return FlowerDeployment(cfg, spec, method_dir, resume)
    from fedsub.engines.flower.engine import FlowerLocal  # late: imports flwr (optional)

    return FlowerLocal(cfg, spec, data, method_dir, resume)
