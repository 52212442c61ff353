"""Method registry: one decorator, the name is the key (`fedsub methods` lists them).

A built-in method is one line of `BUILTIN`: its name and the module that registers it. Looking a
method up imports that module only, so validating a config imports no method, and building
`fedit` imports fedit's module, not GaLore's or AJIVE's. A method of your own registers itself
with `@register(name)` when its module is imported.
"""

from __future__ import annotations

import importlib
from typing import Callable, TypeVar

from pydantic import BaseModel

BUILTIN = {
    "fedavg_full": "fedsub.methods.fedavg_full",
    "fedftg": "fedsub.methods.fedftg",
    "fedgalore": "fedsub.methods.fedgalore",
    "fedit": "fedsub.methods.fedit",
    "fedsa_lora": "fedsub.methods.fedsa_lora",
    "fedsvd": "fedsub.methods.fedsvd",
    "ffa_lora": "fedsub.methods.ffa_lora",
    "flexlora": "fedsub.methods.flexlora",
    "flora": "fedsub.methods.flora",
    "subspace_reg": "fedsub.methods.subspace_reg",
    "svd_redistribute": "fedsub.methods.svd_redistribute",
}
_METHODS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Register a method class under `name`: it defines every member of fedsub.core.method.Method
    (capabilities it lacks declared as such) and carries an `Options` pydantic model."""

    def wrap(cls: T) -> T:
        # late: the contract module imports torch (core.types); validating a config names methods without it
        from fedsub.core.method import missing_members

        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        missing = missing_members(cls)
        if missing:
            raise TypeError(
                f"method {name!r}: {cls.__name__} does not define {', '.join(missing)} (fedsub.core.method.Method)"
            )
        if not (isinstance(cls.Options, type) and issubclass(cls.Options, BaseModel)):
            raise TypeError(f"method {name!r}: class needs an Options pydantic model")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def method_names() -> list[str]:
    """Every method a config may name, built-in or registered, without importing any."""
    return sorted(set(BUILTIN) | set(_METHODS))


def unknown_method(name: str) -> str:
    return f"unknown method {name!r}; available: {', '.join(method_names())}"


def method_class(name: str) -> type:
    """The class registered as `name`; a built-in one's module is imported on first use."""
    if name not in _METHODS and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
        if name not in _METHODS:
            raise RuntimeError(f"{BUILTIN[name]} did not register method {name!r}; fix BUILTIN in fedsub.core.registry")
    if name not in _METHODS:
        raise ValueError(unknown_method(name))
    return _METHODS[name]


def available_methods() -> dict[str, type]:
    """Every method class by name (imports every built-in method: `fedsub methods`, the test matrix)."""
    for name in BUILTIN:
        method_class(name)
    return dict(sorted(_METHODS.items()))


def method_options(name: str) -> type[BaseModel]:
    return method_class(name).Options


def build_method(name: str, options: BaseModel | dict | None = None, run_seed: int = 0):
    """Instantiate a registered method with validated options. A method's own ``seed`` option
    (projectors, sketches, AJIVE draws) left at None becomes ``run_seed``, so a grid's seeds vary
    them too; an explicit seed is kept."""
    cls = method_class(name)
    if not isinstance(options, BaseModel):
        options = cls.Options.model_validate(options or {})
    if "seed" in type(options).model_fields and options.seed is None:
        options = options.model_copy(update={"seed": run_seed})
    return cls(options)
