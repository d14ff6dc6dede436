"""Build hook: the optional compiled core (docs/internals.md#compiled-core).

The core's own ``.py`` files (``danga._core.COMPILED``) are compiled with Cython in
pure-Python mode into extension modules of the same names, next to the sources. The
pure-Python package is the reference and the fallback:

- ``DANGA_COMPILE=0`` never compiles; ``DANGA_COMPILE=1`` compiles an editable install
  too (``pip install -e .`` is pure by default, so a build can never shadow the sources
  a developer edits without being asked for; ``danga._core`` also ignores an in-place
  build older than its source);
- no Cython, no C compiler, not CPython, or any module failing to compile: a warning,
  and the package installs pure (all or nothing: never half a compiled core).

Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent
SRC = ROOT / "src"
# The same list as danga._core.COMPILED (not imported from there: the build must not
# import the package it builds).
COMPILED = ("danga.timers", "danga._registry", "danga._waker", "danga.loop", "danga.socket",
            "danga.backends.epoll", "danga.backends.poll")
# A marker next to the sources, written by an in-place (editable) build: danga._core
# then checks that each extension is newer than its source (docs/internals.md#compiled-core).
INPLACE_MARKER = SRC / "danga" / "_compiled_inplace"


def _warn(message: str) -> None:
    warnings.warn(f"danga: {message}; installing the pure-Python core", stacklevel=2)
    print(f"danga: {message}; installing the pure-Python core", file=sys.stderr)


def _wanted(editable: bool) -> bool:
    flag = os.environ.get("DANGA_COMPILE", "").strip()
    if flag == "0":
        return False
    if sys.implementation.name != "cpython":
        return False
    return flag == "1" or not editable


def _extensions() -> list:  # type: ignore[type-arg]
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        _warn(f"Cython is not available ({exc})")
        return []
    exts = [Extension(name, ["src/" + name.replace(".", "/") + ".py"])
            for name in COMPILED]
    try:
        return cythonize(  # type: ignore[no-any-return]
            exts,
            build_dir="build/cython",
            compiler_directives={
                "language_level": 3,
                # The annotations are for mypy: as Cython types they would change
                # behaviour (a float argument becoming a C double, Cython's own
                # TypeErrors instead of danga's messages). C types come from .pxd files.
                "annotation_typing": False,
                "binding": True,
                "embedsignature": False,
            },
            quiet=True,
        )
    except Exception as exc:  # a Cython error in one module: no compiled core at all
        _warn(f"cythonize failed ({exc})")
        return []


# The slot cache: the compiled core reads the attributes of ordinary Python objects
# (Socket's __slots__ above all) through the generic attribute protocol, where CPython's
# specialising interpreter reads a slot from an inline cache. This gives the compiled
# modules the same cache: (type version tag, attribute name) -> the slot's offset, valid
# exactly as long as the type and its bases are unchanged (CPython gives a modified type
# a new tag, never an old one again). Anything but a set __slots__ member of a type
# with the default attribute lookup takes the generic path. docs/internals.md#compiled-core
SLOT_CACHE_C = r"""
/* danga's slot cache (setup.py) */
#if CYTHON_COMPILING_IN_CPYTHON && PY_VERSION_HEX >= 0x030B0000 && \
    PY_VERSION_HEX < 0x030F0000 && !defined(Py_GIL_DISABLED)
#include "structmember.h"
#define DANGA_SLOT_CACHE_SIZE 512
typedef struct { unsigned int version; PyObject *name; Py_ssize_t offset; } danga_slot_entry;
static danga_slot_entry danga_slot_cache[DANGA_SLOT_CACHE_SIZE];

static PyObject *danga_slot_value(PyObject *obj, Py_ssize_t offset) {
    PyObject *value = *(PyObject **)((char *)obj + offset);
    Py_XINCREF(value);
    return value; /* NULL (unset slot): the generic path raises AttributeError */
}

static CYTHON_INLINE PyObject *danga_slot_read(PyObject *obj, PyObject *name) {
    PyTypeObject *tp = Py_TYPE(obj);
    danga_slot_entry *e;
    PyObject *descr;
    Py_ssize_t offset = -1;
    if (tp->tp_getattro != PyObject_GenericGetAttr ||
            !(tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG))
        return NULL;
    /* The names are the module's interned constants: alive as long as the module. */
    e = &danga_slot_cache[(((size_t)name >> 4) ^ ((size_t)tp->tp_version_tag * 2654435761u))
                          & (DANGA_SLOT_CACHE_SIZE - 1)];
    if (likely(e->version == tp->tp_version_tag && e->name == name))
        return e->offset < 0 ? NULL : danga_slot_value(obj, e->offset);
    descr = _PyType_Lookup(tp, name); /* borrowed; may give tp a version tag */
    if (descr != NULL && Py_TYPE(descr) == &PyMemberDescr_Type) {
        PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type == T_OBJECT_EX && m->flags == 0)
            offset = m->offset;
    }
    if (!(tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG))
        return NULL;
    e->version = tp->tp_version_tag;
    e->name = name;
    e->offset = offset;
    return offset < 0 ? NULL : danga_slot_value(obj, offset);
}
#else
#define danga_slot_read(obj, name) ((PyObject *)NULL)
#endif
"""
_GETATTR = ("static CYTHON_INLINE PyObject* __Pyx_PyObject_GetAttrStr(PyObject* obj, "
            "PyObject* attr_name) {\n")
_FAST_FIRST = ("    PyObject* danga_value = danga_slot_read(obj, attr_name);\n"
               "    if (danga_value) return danga_value;\n")


def _add_slot_cache(c_file: str) -> None:
    """Put the slot cache in front of Cython's generic attribute read in *c_file*
    (once; a Cython whose read looks different keeps its own, with a warning)."""
    text = Path(c_file).read_text(encoding="utf-8")
    if "danga's slot cache" in text:
        return
    if text.count(_GETATTR) != 1:
        warnings.warn(f"danga: no slot cache in {c_file} (Cython's attribute read changed)",
                      stacklevel=2)
        return
    text = text.replace(_GETATTR, SLOT_CACHE_C + _GETATTR + _FAST_FIRST)
    Path(c_file).write_text(text, encoding="utf-8")


class BuildCore(build_ext):
    """build_ext that never fails the install: a failed compile leaves the pure core."""

    def run(self) -> None:
        editable = bool(getattr(self, "editable_mode", False) or self.inplace)
        if not _wanted(editable):
            self.extensions = []
            if editable:  # an earlier opt-in build must not outlive this install
                _remove_inplace_builds()
            return
        compiled = {ext.name: ext for ext in _extensions()}
        if not compiled:
            self.extensions = []
            return
        for ext in self.extensions:  # finalised by setuptools: keep them, give them sources
            ext.sources = compiled[ext.name].sources
            for source in ext.sources:
                if source.endswith(".c"):
                    _add_slot_cache(source)
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers, a compile error
            _warn(f"compiling the core failed ({exc})")
            for path in self.get_outputs():
                Path(path).unlink(missing_ok=True)
            if editable:
                _remove_inplace_builds()
            self.extensions = []
            return
        if editable:
            INPLACE_MARKER.write_text(
                "Written by an editable build of the compiled core (setup.py): danga._core\n"
                "uses an extension module here only while it is newer than its .py.\n")

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []


def _remove_inplace_builds() -> None:
    INPLACE_MARKER.unlink(missing_ok=True)
    for name in COMPILED:
        base = SRC / name.replace(".", "/")
        for built in base.parent.glob(base.name + ".*.so"):
            built.unlink()
        for built in base.parent.glob(base.name + ".*.pyd"):
            built.unlink()


# Placeholder extensions make setuptools run build_ext (and tag the wheel for this
# platform); BuildCore.run replaces them with the real ones, or with nothing.
setup(
    ext_modules=[Extension(name, []) for name in COMPILED],
    cmdclass={"build_ext": BuildCore},
)
