"""The compiled core's attribute cache (docs/internals.md#compiled-core) must read
exactly what Python reads. ``danga.loop``'s profiling proxy forwards any attribute name
to the object it wraps through the compiled ``getattr``, so it reaches the cache with
names and types of the test's choosing. Every test here passes on the pure core too."""

from __future__ import annotations

import socket

import pytest

import danga
from danga.loop import _Profiled

# Longer than any name CPython's own type cache keeps a reference to: nothing but the
# caller holds such a name, and a freed one's memory goes to the next string.
LONG = 120


def _forwarded(obj: object, name: str) -> object:
    return _Profiled.__getattr__(_Profiled(obj, {}), name)


def test_a_freed_name_is_never_another_names_entry():
    cls = type("Long", (), {"__slots__": ("a" * LONG, "b" * LONG)})
    obj = cls()
    setattr(obj, "a" * LONG, "A")
    setattr(obj, "b" * LONG, "B")
    assert obj.__class__ is cls  # a version tag for cls
    for _ in range(20):
        assert _forwarded(obj, "a" * LONG) == "A"
        assert _forwarded(obj, "b" * LONG) == "B"  # often at the freed a-name's address


def test_a_slot_descriptor_of_another_class_is_checked():
    class Owner:
        __slots__ = ("p1", "p2", "p3", "x")

    class Other:  # a slot at the offset Owner keeps x at
        __slots__ = ("c1", "c2", "c3", "c4", "c5")

    Other.y = Owner.__dict__["x"]  # type: ignore[attr-defined]
    obj = Other()
    obj.c1 = obj.c2 = obj.c3 = obj.c4 = obj.c5 = "other's slot"
    for _ in range(3):
        with pytest.raises(TypeError, match="doesn't apply to a 'Other' object"):
            _forwarded(obj, "y")


def test_types_without_a_version_tag_share_no_entry():
    # CPython gives a class modified too often no version tag any more (3.12+): two
    # such classes must not meet in the cache under the same (missing) tag.
    name = "slot"
    classes = [type(f"Worn{i}", (), {"__slots__": (*(f"pad{j}" for j in range(i)), name)})
               for i in range(2)]
    objs = []
    for i, cls in enumerate(classes):
        for n in range(1100):
            cls.churn = n  # type: ignore[attr-defined]
            assert cls.churn == n  # type: ignore[attr-defined]  # a new tag, each time
        obj = cls()
        setattr(obj, name, i)
        for j in range(i):
            setattr(obj, f"pad{j}", "pad")
        objs.append(obj)
    for _ in range(3):
        assert [_forwarded(obj, name) for obj in objs] == [0, 1]


def test_class_of_a_builtin_and_of_a_slotted_object():
    # object.__class__, cached as the object's type (Python 3.12+ keeps the dict of a
    # builtin type elsewhere than its tp_dict).
    class Slotted:
        __slots__ = ()

    for obj in (5, b"", Slotted(), Slotted):
        for _ in range(2):
            assert _forwarded(obj, "__class__") is type(obj)


@pytest.mark.xfail(danga.CORE == "compiled", strict=True,
                   reason="Cython parses the arguments of a compiled function itself: its "
                          "TypeError says 'read() takes exactly 2 positional arguments "
                          "(1 given)', without the class or the missing argument's name")
def test_a_missing_argument_is_named_as_python_names_it():
    a, b = socket.socketpair()
    lp = danga.Loop()
    try:
        obj = danga.Socket(a, loop=lp)
        with pytest.raises(TypeError, match=r"Socket\.read\(\) missing 1 required positional "
                                            r"argument: 'n'"):
            obj.read()  # type: ignore[call-arg]
        obj.close()
    finally:
        lp.close()
        a.close()
        b.close()
