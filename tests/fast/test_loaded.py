"""The compiled hot path is what runs (DESIGN.md §5.4 item 4).

Fails, never skips: without RELAY_PURE_PYTHON=1 the compiled extension modules must be
the ones relay._fast exports; with it, the pure twins must be.
"""

from __future__ import annotations

import importlib.machinery
import inspect
import os
import subprocess
import sys
from pathlib import Path

import relay._fast as fast

PUBLIC = ("DataReader", "parse_command", "scan_headers", "crlf_lines", "dot_stuff")
REPO = Path(__file__).resolve().parents[2]


def _from_extension(obj: object) -> bool:
    module = inspect.getmodule(obj)
    path = getattr(module, "__file__", "") or ""
    return path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_selected_implementation() -> None:
    if os.environ.get("RELAY_PURE_PYTHON") == "1":
        assert fast.IMPLEMENTATION == "python"
        for name in PUBLIC:
            obj = getattr(fast, name)
            assert not _from_extension(obj), name
            assert obj.__module__.endswith("_py"), name
    else:
        assert fast.IMPLEMENTATION == "cython", "set RELAY_PURE_PYTHON=1 only on purpose"
        for name in PUBLIC:
            obj = getattr(fast, name)
            assert _from_extension(obj), f"{name} is not from a compiled module"
            assert obj.__module__.endswith("_c"), name
            # Not a Python-level function or class (those carry __code__ / a __dict__).
            assert not inspect.isfunction(obj), name
        assert not inspect.isfunction(fast.DataReader.feed)


def test_reexports_spec() -> None:
    from relay._fast import spec

    for name in dir(spec):
        if name.startswith(("FLAG_", "HDR_", "MAX_")) or name in (
            "Command", "CommandSyntaxError", "FailureKind", "HeaderSummary"
        ):
            assert getattr(fast, name) is getattr(spec, name), name
            assert name in fast.__all__, name


def test_missing_build_is_an_error_not_a_fallback() -> None:
    """With the compiled modules unimportable, importing relay._fast fails loudly."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.startswith('relay._fast.') and name.endswith('_c'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "try:\n"
        "    import relay._fast\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('imported', relay._fast.IMPLEMENTATION)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RELAY_PURE_PYTHON"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == (
        "relay._fast: compiled hot path not built; run `make compile` (or set RELAY_PURE_PYTHON=1)"
    )
    env["RELAY_PURE_PYTHON"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == "imported python"
