"""triton, loaded so that it cannot crash napari.

torch imports triton whenever it is installed (through ``torch._dynamo``, which torchvision and
so timm import). ``libtriton.so`` carries its own copy of LLVM. Mesa's software OpenGL (llvmpipe:
napari under Xvfb, remote desktops, many Intel/AMD desktops) loads the system's LLVM into the
process with global symbols once napari has a GL context; a libtriton loaded after that binds
its LLVM references to Mesa's copy, of another version, and the process dies with SIGSEGV.
Loaded with ``RTLD_DEEPBIND``, libtriton binds to its own symbols first, whatever is loaded.

Importing this module does it, once per process, before anything imports timm, torchvision or
``torch._dynamo`` (``models.factory`` imports it first). Not on Linux (no ``RTLD_DEEPBIND``),
without triton, or when triton is already imported, it does nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

__all__ = ["triton_loaded_isolated"]


def _load() -> bool:
    deepbind = getattr(os, "RTLD_DEEPBIND", None)
    if deepbind is None or "triton" in sys.modules:
        return False
    try:
        if importlib.util.find_spec("triton") is None:
            return False
    except (ImportError, ValueError):
        return False
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        with contextlib.suppress(Exception):  # a broken triton: torch then treats it as absent
            import triton  # noqa: F401
    finally:
        sys.setdlopenflags(flags)
    return "triton" in sys.modules


#: Whether this module loaded triton (False: absent, already loaded, or not Linux).
triton_loaded_isolated = _load()
