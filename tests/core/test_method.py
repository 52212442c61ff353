"""The method contract: every registered method defines every member, capabilities declared, none discovered."""

import pytest

from fedsub.core.fedavg import NoOptions
from fedsub.core.method import MEMBERS, missing_members
from fedsub.core.registry import available_methods, register


def stub(name):
    return lambda self, *args: None


def method_class(leave_out=(), annotate=None):
    """A method class with every member of the contract but `leave_out` (annotations: `annotate`)."""
    members = {
        "Options": NoOptions,
        "warmup": None,
        "client_state": frozenset(),
        "diagnostics": None,
        "global_model_note": None,
    }
    members |= {m: stub(m) for m in MEMBERS if m not in members and m != "options"}
    body = {k: v for k, v in members.items() if k not in leave_out}
    body["__annotations__"] = annotate or {}
    return type("Sketch", (), body)


def test_every_registered_method_defines_every_member():
    for name, cls in available_methods().items():
        assert missing_members(cls) == [], name
    assert missing_members(method_class()) == []


def test_a_method_that_leaves_out_a_member_is_refused_at_registration():
    # a forgotten member fails at import, not as a silent default in a run
    with pytest.raises(TypeError, match="does not define update_spec"):
        register("incomplete")(method_class(leave_out=["update_spec"]))
    with pytest.raises(TypeError, match="does not define warmup"):  # "no warm-up" is declared, not assumed
        register("incomplete")(method_class(leave_out=["warmup"]))
    assert "incomplete" not in available_methods()


def test_a_declaration_set_in_init_is_annotated_on_the_class():
    assert missing_members(method_class(leave_out=["client_state"])) == ["client_state"]
    assert missing_members(method_class(leave_out=["client_state"], annotate={"client_state": "frozenset[str]"})) == []
