"""The registry's table of built-in methods: every `@register(name)` in fedsub/methods is a line of
BUILTIN pointing at its module (else a config naming it would fail as unknown), and nothing more."""

import ast
from pathlib import Path

import pytest

from fedsub.core.registry import BUILTIN, method_class, method_names

METHODS = Path(__file__).parents[2] / "src" / "fedsub" / "methods"


def registered_in_source() -> dict[str, str]:
    found = {}
    for path in sorted(METHODS.rglob("*.py")):
        module = "fedsub." + ".".join(path.relative_to(METHODS.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register" and node.args:
                found[node.args[0].value] = module.removesuffix(".__init__")
    return found


def test_builtin_names_every_registered_method_and_its_module():
    assert BUILTIN == registered_in_source()


def test_an_unknown_name_lists_the_known_ones_without_importing_them():
    with pytest.raises(ValueError, match="unknown method 'fedsgd'; available: fedavg_full, .*fedit"):
        method_class("fedsgd")
    assert set(BUILTIN) <= set(method_names())
