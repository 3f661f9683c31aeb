"""Declares the compiled hot path (relay/_fast/*.pyx); metadata lives in pyproject.toml."""

import os

from setuptools import Extension, setup

DEBUG = os.environ.get("RELAY_DEBUG_BUILD") == "1"


def extensions() -> list:
    from Cython.Build import cythonize

    directives = {"language_level": "3", "embedsignature": True}
    macros = []
    if DEBUG:
        directives["linetrace"] = True
        macros.append(("CYTHON_TRACE_NOGIL", "1"))
    names = sorted(
        f[:-4] for f in os.listdir(os.path.join("relay", "_fast")) if f.endswith(".pyx")
    )
    exts = [
        Extension(
            f"relay._fast.{name}",
            [os.path.join("relay", "_fast", f"{name}.pyx")],
            extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
            define_macros=macros,
        )
        for name in names
    ]
    return cythonize(
        exts,
        compiler_directives=directives,
        annotate=DEBUG or os.environ.get("RELAY_CYTHON_ANNOTATE") == "1",
    )


setup(ext_modules=extensions())
