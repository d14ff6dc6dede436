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

import hashlib
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


def _extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        _warn(f"Cython is not available ({exc})")
        return []
    exts = [Extension(name, ["src/" + name.replace(".", "/") + ".py"])
            for name in COMPILED]
    for name in COMPILED:  # patched by another setup.py: generate it anew
        generated = Path("build/cython/src", name.replace(".", "/") + ".c")  # as cythonize
        if generated.exists() and ATTR_CACHE_MARK not in generated.read_text("utf-8"):
            generated.unlink()
    try:
        return cythonize(
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


# The attribute cache: the compiled core reads the attributes of ordinary Python objects
# (Socket's __slots__ above all) and calls their methods through the generic attribute
# protocol, where CPython's specialising interpreter uses an inline cache. This gives
# the compiled modules the same kind of cache, in front of Cython's generic attribute
# read and method call: (type version tag, attribute name) -> what the name is on that
# type (a slot's offset, object's __class__, a method of a type without an instance
# dict). It is valid exactly as long as the type and its bases are unchanged: CPython
# gives a changed type a new tag, never an old one again. A slot is cached only for
# a type of the layout its descriptor was made for, and an entry keeps its name alive
# (names are compared by address). Anything else takes the generic path.
# docs/internals.md#compiled-core
ATTR_CACHE_C = r"""
/* danga's attribute cache (setup.py) @HASH@ */
#if CYTHON_COMPILING_IN_CPYTHON && PY_VERSION_HEX >= 0x030B0000 && \
    PY_VERSION_HEX < 0x030F0000 && !defined(Py_GIL_DISABLED)
#include "structmember.h"
#define DANGA_CACHE_SIZE 512
#define DANGA_OTHER (-1)   /* anything else: the generic path */
#define DANGA_METHOD (-2)  /* a method descriptor, on a type without an instance dict */
#define DANGA_CLASS (-3)   /* object's __class__ */
#ifdef Py_TPFLAGS_MANAGED_DICT
#define DANGA_MANAGED_DICT Py_TPFLAGS_MANAGED_DICT
#else
#define DANGA_MANAGED_DICT 0
#endif
typedef struct {
    unsigned int version; PyObject *name; Py_ssize_t kind; PyObject *descr;
} danga_cache_entry;
static danga_cache_entry danga_cache[DANGA_CACHE_SIZE];

/* The entry of (type(obj), name), filled on a miss; NULL if the type has no valid
   version tag or another attribute lookup than the default one. The entry holds a
   reference to its name: a name is compared by address, and a freed one's address may
   be the next string's (getattr() with a name made at run time). descr is borrowed
   from the type's dict, which keeps it while the tag is unchanged. */
static danga_cache_entry *danga_cache_get(PyObject *obj, PyObject *name) {
    PyTypeObject *tp = Py_TYPE(obj);
    danga_cache_entry *e;
    PyObject *descr;
    Py_ssize_t kind = DANGA_OTHER;
    /* A tag of 0 is none (a CPython that stops keeping the flag still clears it) */
    if (tp->tp_getattro != PyObject_GenericGetAttr ||
            !(tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) || tp->tp_version_tag == 0)
        return NULL;
    e = &danga_cache[(((size_t)name >> 4) ^ ((size_t)tp->tp_version_tag * 2654435761u))
                     & (DANGA_CACHE_SIZE - 1)];
    if (likely(e->version == tp->tp_version_tag && e->name == name))
        return e;
    descr = _PyType_Lookup(tp, name); /* may give tp a version tag */
    if (descr != NULL) {
        PyTypeObject *dt = Py_TYPE(descr);
        if (dt == &PyMemberDescr_Type) {
            PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
            /* Only a slot of tp or of a base: another type's slot descriptor stored in
               tp's dict has its offset in another layout (its __get__ raises). */
            if (m->type == T_OBJECT_EX && m->flags == 0 &&
                    PyType_IsSubtype(tp, PyDescr_TYPE(descr)))
                kind = m->offset;
        } else if ((dt->tp_flags & Py_TPFLAGS_METHOD_DESCRIPTOR) && tp->tp_dictoffset == 0
                   && !(tp->tp_flags & DANGA_MANAGED_DICT)) {
            kind = DANGA_METHOD;
        } else if (PyUnicode_CompareWithASCIIString(name, "__class__") == 0 &&
                   descr == _PyType_Lookup(&PyBaseObject_Type, name)) {
            /* not object's tp_dict: NULL for a static builtin type on 3.12+ */
            kind = DANGA_CLASS;
        }
    }
    if (!(tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) || tp->tp_version_tag == 0)
        return NULL;
    Py_INCREF(name);
    Py_XSETREF(e->name, name); /* freeing a str runs no Python code */
    e->version = tp->tp_version_tag;
    e->kind = kind;
    e->descr = descr;
    return e;
}

/* A new reference to obj.name when the cache knows it, else NULL (no error set). */
static CYTHON_INLINE PyObject *danga_cached_getattr(PyObject *obj, PyObject *name) {
    danga_cache_entry *e = danga_cache_get(obj, name);
    PyObject *value;
    if (e == NULL || e->kind < 0) {
        if (e != NULL && e->kind == DANGA_CLASS) {
            value = (PyObject *)Py_TYPE(obj);
            Py_INCREF(value);
            return value;
        }
        return NULL;
    }
    value = *(PyObject **)((char *)obj + e->kind);
    Py_XINCREF(value);
    return value; /* NULL (an unset slot): the generic path raises AttributeError */
}

/* PyObject_VectorcallMethod (args[0] is the object), with the cache in front. */
static PyObject *danga_call_method(PyObject *name, PyObject *const *args, size_t nargsf) {
    danga_cache_entry *e = danga_cache_get(args[0], name);
    PyObject *callable, *result;
    if (e != NULL && e->kind == DANGA_METHOD) {
        callable = e->descr; /* unbound: called with the object as its first argument */
        Py_INCREF(callable);
        result = PyObject_Vectorcall(callable, args, nargsf & ~PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     NULL);
        Py_DECREF(callable);
        return result;
    }
    if (e != NULL && e->kind >= 0) {
        callable = *(PyObject **)((char *)args[0] + e->kind);
        if (callable != NULL) { /* a callable in a slot: args[0] may be borrowed */
            Py_INCREF(callable);
            result = PyObject_Vectorcall(callable, args + 1, nargsf - 1, NULL);
            Py_DECREF(callable);
            return result;
        }
    }
    return PyObject_VectorcallMethod(name, args, nargsf, NULL);
}
#define DANGA_ATTR_CACHE 1
#endif
"""
# The patch is named by a hash of its text: a generated file patched by an earlier
# setup.py is generated anew (cythonize alone regenerates only after a .py changed).
ATTR_CACHE_C = ATTR_CACHE_C.replace(
    "@HASH@", hashlib.sha256(ATTR_CACHE_C.encode()).hexdigest()[:16])
ATTR_CACHE_MARK = ATTR_CACHE_C.splitlines()[1]
_GETATTR_PROTO = ("static CYTHON_INLINE PyObject* __Pyx_PyObject_GetAttrStr(PyObject* obj, "
                  "PyObject* attr_name);\n")
_GETATTR = ("static CYTHON_INLINE PyObject* __Pyx_PyObject_GetAttrStr(PyObject* obj, "
            "PyObject* attr_name) {\n")
_GETATTR_FIRST = ("#ifdef DANGA_ATTR_CACHE\n"
                  "    PyObject* danga_value = danga_cached_getattr(obj, attr_name);\n"
                  "    if (danga_value) return danga_value;\n"
                  "#endif\n")
_CALL_METHOD = ("#define __Pyx_PyObject_FastCallMethod(name, args, nargsf) "
                "PyObject_VectorcallMethod(name, args, nargsf, NULL)\n")
_CALL_METHOD_CACHED = ("#ifdef DANGA_ATTR_CACHE\n"
                       "#define __Pyx_PyObject_FastCallMethod(name, args, nargsf) "
                       "danga_call_method(name, args, nargsf)\n#else\n" + _CALL_METHOD +
                       "#endif\n")


def _add_attr_cache(c_file: str) -> None:
    """Put the attribute cache in front of Cython's generic attribute read and method
    call in *c_file* (once). A Cython whose generated code looks different keeps its
    own, with a warning: slower, never wrong."""
    text = Path(c_file).read_text(encoding="utf-8")
    if ATTR_CACHE_MARK in text:
        return
    if text.count(_GETATTR_PROTO) != 1 or text.count(_GETATTR) != 1:
        warnings.warn(f"danga: no attribute cache in {c_file} (Cython's generated attribute "
                      "read is not the one setup.py knows)", stacklevel=2)
        return
    text = text.replace(_GETATTR_PROTO, ATTR_CACHE_C + _GETATTR_PROTO)
    text = text.replace(_GETATTR, _GETATTR + _GETATTR_FIRST)
    text = text.replace(_CALL_METHOD, _CALL_METHOD_CACHED)  # absent: no method calls
    Path(c_file).write_text(text, encoding="utf-8")


class BuildCore(build_ext):
    """build_ext that never fails the install: a failed compile leaves the pure core."""

    def run(self) -> None:
        editable = bool(getattr(self, "editable_mode", False) or self.inplace)
        if not _wanted(editable):
            self._pure(editable)
            return
        compiled = {ext.name: ext for ext in _extensions()}
        if not compiled:
            self._pure(editable)
            return
        for ext in self.extensions:  # finalised by setuptools: keep them, give them sources
            ext.sources = compiled[ext.name].sources
            for source in ext.sources:
                if source.endswith(".c"):
                    _add_attr_cache(source)
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers, a compile error
            _warn(f"compiling the core failed ({exc})")
            self._pure(editable)
            return
        if editable:
            INPLACE_MARKER.write_text(
                "Written by an editable build of the compiled core (setup.py): danga._core\n"
                "uses an extension module here only while it is newer than its .py.\n")

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []

    def _pure(self, editable: bool) -> None:
        # No compiled core in this build: none from an earlier one either, neither in
        # the build directory (pip builds a local tree in place, and a wheel takes all
        # of build_lib) nor, for an editable install, next to the sources.
        self.extensions = []
        _remove_builds(Path(self.build_lib))
        if editable:
            INPLACE_MARKER.unlink(missing_ok=True)
            _remove_builds(SRC)


def _remove_builds(root: Path) -> None:
    for name in COMPILED:
        base = root / name.replace(".", "/")
        for pattern in (".*.so", ".*.pyd"):
            for built in base.parent.glob(base.name + pattern):
                built.unlink()


# Placeholder extensions make setuptools run build_ext (and tag the wheel for this
# platform); BuildCore.run replaces them with the real ones, or with nothing.
setup(
    ext_modules=[Extension(name, []) for name in COMPILED],
    cmdclass={"build_ext": BuildCore},
)
