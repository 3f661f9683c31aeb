"""Import boundaries of DESIGN.md §2, checked on the source: every module under relay/ is
parsed with ast (imports inside functions and TYPE_CHECKING blocks count too) and each
import is held against the rule for its layer. A failure names the file, line and import.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import relay

PACKAGE_DIR = Path(relay.__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
STDLIB = frozenset(sys.stdlib_module_names)
# Composition roots (DESIGN.md §2): they may import everything; nothing else imports them.
ROOTS = frozenset({"relay.__main__", "relay.cli", "relay.server", "relay.worker"})
MACHINE_FORBIDDEN = ("asyncio", "socket", "ssl", "time", "random", "logging", "lmdb", "dns",
                     "prometheus_client", "relay.config", "relay.metrics")
MACHINES = ("relay.smtp.events", "relay.smtp.replies", "relay.smtp.grammar",
            "relay.smtp.settings", "relay.smtp.machine")
OUTBOUND_MACHINES = ("relay.delivery.client", "relay.delivery.events", "relay.delivery.replies")

Import = tuple[int, str]  # (line, dotted module name)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_relay_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return (base.is_dir() or base.with_suffix(".py").exists()
            or base.with_suffix(".pyx").exists())


def python_imports(source: str, module: str, is_package: bool) -> Iterator[Import]:
    """Every module `source` imports, relative imports resolved against `module`."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            if base == "__future__":
                continue
            for alias in node.names:
                # `from relay import metrics` imports the module relay.metrics.
                candidate = f"{base}.{alias.name}"
                if base.startswith("relay") and is_relay_module(candidate):
                    yield node.lineno, candidate
                else:
                    yield node.lineno, base


_PYX_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import\b|c?import\s+([\w.]+))", re.M)


def pyx_imports(source: str) -> Iterator[Import]:
    """Cython sources cannot go through ast: a line scan of (c)import statements."""
    for m in _PYX_IMPORT.finditer(source):
        yield source.count("\n", 0, m.start()) + 1, m.group(1) or m.group(2)


def all_modules() -> list[tuple[str, Path, list[Import]]]:
    out = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")) + sorted(PACKAGE_DIR.rglob("*.pyx")):
        name = module_name(path)
        text = path.read_text(encoding="utf-8")
        found = (list(pyx_imports(text)) if path.suffix == ".pyx"
                 else list(python_imports(text, name, path.name == "__init__.py")))
        out.append((name, path, found))
    return out


MODULES = all_modules()


def under(dotted: str, prefix: str) -> bool:
    return dotted == prefix or dotted.startswith(prefix + ".")


def top(dotted: str) -> str:
    return dotted.split(".")[0]


def violations(select: Callable[[str], bool], why: Callable[[str, str], str | None],
               modules: list[tuple[str, Path, list[Import]]] | None = None) -> list[str]:
    """`why(module, imported)` returns a reason when the import breaks the rule."""
    out = []
    for name, path, found in MODULES if modules is None else modules:
        if not select(name):
            continue
        for line, dotted in found:
            reason = why(name, dotted)
            if reason:
                out.append(f"{path.relative_to(ROOT)}:{line}: {name} imports {dotted} ({reason})")
    return out


def assert_clean(found: list[str]) -> None:
    assert not found, "import boundary violations (DESIGN.md §2):\n" + "\n".join(found)


# ---- the checker itself --------------------------------------------------------------------


def test_every_module_under_relay_is_checked() -> None:
    names = {name for name, _, _ in MODULES}
    assert {"relay.smtp.machine", "relay.queue.store", "relay.metrics", "relay._fast.spec",
            "relay._fast.cmdline_c"} <= names


def test_checker_resolves_relative_and_from_package_imports() -> None:
    source = ("from . import replies\nfrom ..queue import store\nfrom relay import metrics\n"
              "import asyncio.events\nfrom relay.smtp.grammar import Mailbox\n")
    found = [d for _, d in python_imports(source, "relay.smtp.machine", False)]
    assert found == ["relay.smtp.replies", "relay.queue.store", "relay.metrics",
                     "asyncio.events", "relay.smtp.grammar"]


def test_checker_sees_imports_inside_functions() -> None:
    source = "def f():\n    import socket\n"
    assert list(python_imports(source, "relay.smtp.machine", False)) == [(2, "socket")]


def test_checker_reads_cython_cimports() -> None:
    source = "cimport cython\nfrom libc.string cimport memchr\nfrom relay._fast.spec import X\n"
    assert list(pyx_imports(source)) == [(1, "cython"), (2, "libc.string"),
                                         (3, "relay._fast.spec")]


# ---- the rules ---------------------------------------------------------------------------------


def test_fast_imports_only_stdlib_and_fast() -> None:
    cython = {"cython", "cpython", "libc", "libcpp", "posix"}

    def why(module: str, dotted: str) -> str | None:
        if top(dotted) in {"asyncio", "socket", "ssl", "selectors", "subprocess"}:
            return "_fast does no I/O"
        if under(dotted, "relay"):
            return None if under(dotted, "relay._fast") else "_fast imports only relay._fast"
        if top(dotted) in STDLIB or top(dotted) in cython:
            return None
        return "_fast imports only the stdlib"

    assert_clean(violations(lambda m: under(m, "relay._fast"), why))


def machine_rule(module: str, dotted: str) -> str | None:
    if any(under(dotted, bad) for bad in MACHINE_FORBIDDEN):
        return "protocol machines take no clock, randomness, I/O, config or metrics"
    if under(dotted, "relay"):
        # auth.sasl: the SASL steps of SMTP AUTH, a sans-I/O machine itself (DESIGN.md §2).
        # smtp.settings: the machine's own settings, states and limits, split from it.
        allowed = ("relay._fast", "relay.smtp.events", "relay.smtp.replies", "relay.smtp.grammar",
                   "relay.smtp.settings", "relay.auth.sasl")
        ok = dotted == "relay" or any(under(dotted, a) for a in allowed)
        return None if ok else ("machines import only _fast, auth.sasl and "
                                "smtp.{events,replies,grammar,settings}")
    return None if top(dotted) in STDLIB else "machines import only the stdlib"


def test_smtp_protocol_machines_do_no_io() -> None:
    assert_clean(violations(lambda m: m in MACHINES, machine_rule))


def test_outbound_client_machine_does_no_io() -> None:
    # DESIGN.md §2 lists delivery/client among the protocol machines (it shares the SMTP
    # vocabulary of smtp.replies/grammar and returns queue.model Outcomes); its events and
    # reply reading, delivery.{events,replies}, are parts of it and follow the same rule.
    def why(module: str, dotted: str) -> str | None:
        if any(under(dotted, bad) for bad in MACHINE_FORBIDDEN):
            return "protocol machines take no clock, randomness, I/O, config or metrics"
        return None if under(dotted, "relay") or top(dotted) in STDLIB else "stdlib only"

    assert_clean(violations(lambda m: m in OUTBOUND_MACHINES, why))


def test_a_violation_is_reported_with_file_line_and_import() -> None:
    fake = [("relay.smtp.machine", PACKAGE_DIR / "smtp" / "machine.py",
             [(3, "enum"), (7, "time"), (9, "relay.smtp.policy"), (11, "lmdb")])]
    assert violations(lambda m: True, machine_rule, fake) == [
        "relay/smtp/machine.py:7: relay.smtp.machine imports time (protocol machines take "
        "no clock, randomness, I/O, config or metrics)",
        "relay/smtp/machine.py:9: relay.smtp.machine imports relay.smtp.policy (machines "
        "import only _fast, auth.sasl and smtp.{events,replies,grammar,settings})",
        "relay/smtp/machine.py:11: relay.smtp.machine imports lmdb (protocol machines take "
        "no clock, randomness, I/O, config or metrics)",
    ]


def test_queue_knows_nothing_of_smtp_delivery_mda_or_auth() -> None:
    def why(module: str, dotted: str) -> str | None:
        for bad in ("relay.smtp", "relay.delivery", "relay.mda", "relay.auth"):
            if under(dotted, bad):
                return "the queue is the contract between roles, not a client of them"
        return None

    assert_clean(violations(lambda m: under(m, "relay.queue"), why))


def test_metrics_imports_nothing_from_relay() -> None:
    def why(module: str, dotted: str) -> str | None:
        return "metrics is a leaf" if under(dotted, "relay") else None

    assert_clean(violations(lambda m: m == "relay.metrics", why))


def test_nothing_imports_the_composition_roots() -> None:
    def why(module: str, dotted: str) -> str | None:
        if any(under(dotted, root) for root in ROOTS - {"relay.__main__"}):
            return "cli, server and worker are composition roots"
        return None

    assert_clean(violations(lambda m: m not in ROOTS, why))


def test_session_base_knows_no_protocol_role_or_metric() -> None:
    # relay.glue holds what every */session.py shares; machines, roles and metrics come
    # from the subclasses, so it stays below all of them.
    def why(module: str, dotted: str) -> str | None:
        if under(dotted, "relay"):
            return (None if under(dotted, "relay.auth.throttle")
                    else "the session base imports only auth.throttle from relay")
        return None if top(dotted) in STDLIB else "stdlib only"

    assert_clean(violations(lambda m: m == "relay.glue", why))


def test_intake_does_not_import_the_session_or_delivery() -> None:
    def why(module: str, dotted: str) -> str | None:
        if under(dotted, "relay.smtp.session") or under(dotted, "relay.delivery"):
            return "intake sits below the session and beside delivery"
        return None

    assert_clean(violations(lambda m: m == "relay.intake", why))


def test_policy_does_not_import_transports_or_queue_internals() -> None:
    def why(module: str, dotted: str) -> str | None:
        if top(dotted) == "asyncio" or under(dotted, "relay.queue"):
            return "policy is a function of (config, accounts, peer, event)"
        return None

    assert_clean(violations(lambda m: m == "relay.smtp.policy", why))


def test_delivery_does_not_import_inbound_smtp_roles_or_mda_servers() -> None:
    bad = ("relay.smtp.machine", "relay.smtp.session", "relay.smtp.policy", "relay.mda.imap",
           "relay.mda.pop3")

    def why(module: str, dotted: str) -> str | None:
        return "another role" if any(under(dotted, b) for b in bad) else None

    assert_clean(violations(lambda m: under(m, "relay.delivery"), why))


def test_mda_does_not_import_queue_smtp_or_delivery() -> None:
    bad = ("relay.queue", "relay.smtp", "relay.delivery")

    def why(module: str, dotted: str) -> str | None:
        return "the MDA only touches mailboxes" if any(under(dotted, b) for b in bad) else None

    assert_clean(violations(lambda m: under(m, "relay.mda"), why))


MAILBOX_MACHINES = ("relay.mda.pop3.machine", "relay.mda.pop3.events", "relay.mda.pop3.replies",
                    "relay.auth.sasl", "relay.mda.imap.parser", "relay.mda.imap.grammar",
                    "relay.mda.imap.tokens", "relay.mda.imap.sequence_set",
                    "relay.mda.imap.fetch_items", "relay.mda.imap.search_keys",
                    "relay.mda.imap.arguments", "relay.mda.imap.message", "relay.mda.imap.mime",
                    "relay.mda.imap.addresses", "relay.mda.imap.search",
                    "relay.mda.imap.utf7", "relay.mda.imap.machine", "relay.mda.imap.responses")


def test_mailbox_protocol_machines_do_no_io() -> None:
    # DESIGN.md §2: the POP3/IMAP machines and SASL steps are sans-I/O like SMTP's.
    def why(module: str, dotted: str) -> str | None:
        if any(under(dotted, bad) for bad in MACHINE_FORBIDDEN):
            return "protocol machines take no clock, randomness, I/O, config or metrics"
        if under(dotted, "relay"):
            # pop3.{events,replies}: the POP3 machine's vocabulary, as smtp.{events,replies}.
            allowed = ("relay.auth.sasl", "relay.mda.imap", "relay.mda.pop3.events",
                       "relay.mda.pop3.replies")
            ok = any(under(dotted, a) for a in allowed)
            return None if ok else ("mailbox machines import only auth.sasl, mda.imap.* and "
                                    "mda.pop3.{events,replies}")
        return None if top(dotted) in STDLIB else "stdlib only"

    assert_clean(violations(lambda m: m in MAILBOX_MACHINES, why))
