"""Method registry: one decorator, the name is the key (`fedsub methods` lists them)."""

from __future__ import annotations

from typing import Callable, TypeVar

from pydantic import BaseModel

from fedsub.core.method import missing_members

_METHODS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Register a method class under `name`: it defines every member of fedsub.core.method.Method
    (capabilities it lacks declared as such) and carries an `Options` pydantic model."""

    def wrap(cls: T) -> T:
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        missing = missing_members(cls)
        if missing:
            raise TypeError(f"method {name!r}: {cls.__name__} does not define {', '.join(missing)} (fedsub.core.method.Method)")
        if not (isinstance(cls.Options, type) and issubclass(cls.Options, BaseModel)):
            raise TypeError(f"method {name!r}: class needs an Options pydantic model")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def _load_builtin_methods() -> None:
    import fedsub.methods  # noqa: F401  (each module registers itself on import)


def available_methods() -> dict[str, type]:
    _load_builtin_methods()
    return dict(sorted(_METHODS.items()))


def method_class(name: str) -> type:
    methods = available_methods()
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(methods)}")
    return methods[name]


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
