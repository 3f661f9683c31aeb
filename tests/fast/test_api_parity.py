"""Each pair of twins exports the same API (DESIGN.md §5.2, §5.4 item 5).

Public names (__all__), kinds, parameters (names, kinds, defaults; annotations live in
the twin only), read-only properties, and the flag constants mirrored in the .pyx
cdef enums, which must equal spec.py's.
"""

from __future__ import annotations

import ast
import inspect

import pytest

from relay._fast import spec

from . import CMDLINE_IMPLS, DATA_IMPLS, HEADERS_IMPLS, OUTBOUND_IMPLS

PAIRS = [
    pytest.param(DATA_IMPLS, id="data"),
    pytest.param(CMDLINE_IMPLS, id="cmdline"),
    pytest.param(HEADERS_IMPLS, id="headers"),
    pytest.param(OUTBOUND_IMPLS, id="outbound"),
]


def _params(sig: inspect.Signature) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def _init_params(cls: type) -> list[tuple]:
    """Parameters of cls.__init__ (for a cdef class, from the embedded signature)."""
    try:
        return _params(inspect.signature(cls))
    except ValueError:
        pass
    # Cython's embedsignature: first docstring line is "Name(a, b=DEFAULT)".
    first = (cls.__doc__ or "").splitlines()[0]
    assert first.startswith(cls.__name__ + "("), first
    fn = ast.parse("def f" + first[len(cls.__name__):].split(" ->")[0] + ": pass").body[0]
    args = fn.args  # type: ignore[attr-defined]
    defaults = [eval(ast.unparse(d), vars(spec)) for d in args.defaults]  # noqa: S307
    pad = [inspect.Parameter.empty] * (len(args.args) - len(defaults))
    return [
        (a.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, d)
        for a, d in zip(args.args, pad + defaults)
    ]


@pytest.mark.parametrize("pair", PAIRS)
def test_same_public_names(pair: list) -> None:
    (_, py), (_, c) = pair
    assert sorted(py.__all__) == sorted(c.__all__)
    for name in py.__all__:
        a, b = getattr(py, name), getattr(c, name)
        assert callable(a) == callable(b), name
        if isinstance(a, type):
            assert isinstance(b, type), name
            assert _init_params(a) == _init_params(b), name
            public = lambda t: sorted(n for n in dir(t) if not n.startswith("_"))  # noqa: E731
            assert public(a) == public(b), name
            for attr in public(a):
                x, y = getattr(a, attr), getattr(b, attr)
                if callable(x):
                    assert _params(inspect.signature(x)) == _params(inspect.signature(y)), attr
                else:  # a data descriptor (property / getset) in both
                    assert hasattr(x, "__get__") and hasattr(y, "__get__"), attr
        elif callable(a):
            assert _params(inspect.signature(a)) == _params(inspect.signature(b)), name
        else:
            assert a == b, name


@pytest.mark.parametrize("pair,prefix", [(DATA_IMPLS, "FLAG_"), (HEADERS_IMPLS, "HDR_")], ids=["data", "headers"])
def test_flag_constants_equal_spec(pair: list, prefix: str) -> None:
    expected = {n: getattr(spec, n) for n in dir(spec) if n.startswith(prefix)}
    for _, module in pair:
        exported = {n: getattr(module, n) for n in module.__all__ if n.startswith(prefix)}
        assert exported == expected, module.__name__


def test_cdef_enum_values() -> None:
    from relay._fast import data_c, headers_c

    for name in ("FLAG_BARE_LF", "FLAG_BARE_CR", "FLAG_LONG_LINE", "FLAG_TOO_BIG", "FLAG_NUL"):
        assert getattr(data_c, name) == getattr(spec, name), name
    for name in ("HDR_MESSAGE_ID", "HDR_DATE", "HDR_FROM"):
        assert getattr(headers_c, name) == getattr(spec, name), name


@pytest.mark.parametrize("impl", DATA_IMPLS, ids=lambda i: i[0])
def test_properties_read_only(impl: tuple) -> None:
    _, module = impl
    reader = module.DataReader(10, max_line=5)
    for attr in ("done", "size", "flags"):
        with pytest.raises(AttributeError):
            setattr(reader, attr, 1)


@pytest.mark.parametrize("pair", [CMDLINE_IMPLS], ids=["cmdline"])
def test_same_exception_types(pair: list) -> None:
    for _, module in pair:
        with pytest.raises(spec.CommandSyntaxError) as info:
            module.parse_command(b"")
        assert type(info.value) is spec.CommandSyntaxError
        assert info.value.kind is spec.FailureKind.EMPTY
