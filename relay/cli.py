"""The operator's command line: serve | check-config | users | queue.

Maps errors to one-line messages and exit codes; no logic of its own.
Exit codes: 0 ok, 1 operational error, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from relay import config as configuration
from relay import log

DEFAULT_CONFIG = os.environ.get("RELAY_CONFIG", "config/relay.toml")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log.setup(verbose=getattr(args, "verbose", False))
    try:
        cfg = configuration.load(args.config)
    except configuration.ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(cfg, args) or 0)
    except KeyboardInterrupt:
        return 130
    except _Failure as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1


class _Failure(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=DEFAULT_CONFIG, type=Path,
                        help=f"configuration file (default: {DEFAULT_CONFIG})")
    p = argparse.ArgumentParser(prog="relay", description="relay mail server")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", parents=[common], help="run the server in the foreground")
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(func=_serve)
    s = sub.add_parser("check-config", parents=[common], help="validate the configuration")
    s.set_defaults(func=_check_config)

    users = sub.add_parser("users", help="manage accounts").add_subparsers(
        dest="users_command", required=True)
    s = users.add_parser("add", parents=[common], help="add an account; password on stdin")
    s.add_argument("address")
    s.set_defaults(func=_users_add)
    s = users.add_parser("list", parents=[common], help="list accounts")
    s.set_defaults(func=_users_list)
    s = users.add_parser("del", parents=[common], help="delete an account")
    s.add_argument("address")
    s.set_defaults(func=_users_del)

    queue = sub.add_parser("queue", help="inspect the queue").add_subparsers(
        dest="queue_command", required=True)
    s = queue.add_parser("list", parents=[common], help="list queued messages")
    s.add_argument("--json", action="store_true", help="JSON array")
    s.set_defaults(func=_queue_list)
    s = queue.add_parser("show", parents=[common], help="print one queued message")
    s.add_argument("id")
    s.set_defaults(func=_queue_show)
    s = queue.add_parser("flush", parents=[common], help="retry now (one message, or all)")
    s.add_argument("id", nargs="?")
    s.set_defaults(func=_queue_flush)
    for name, helptext, func in (
            ("delete", "remove a message without notice", "_queue_delete"),
            ("hold", "keep a message from delivery until released", "_queue_hold"),
            ("release", "release a held message for delivery now", "_queue_release")):
        s = queue.add_parser(name, parents=[common], help=helptext)
        s.add_argument("id")
        s.set_defaults(func=globals()[func])
    return p


def _serve(cfg: configuration.Config, args: argparse.Namespace) -> int:
    from relay import server

    try:
        return server.serve(cfg)
    except (ImportError, server.StartupError) as exc:
        raise _Failure(str(exc)) from None


def _check_config(cfg: configuration.Config, args: argparse.Namespace) -> int:
    print(f"{cfg.path}: ok")
    return 0


def _accounts(cfg: configuration.Config):  # type: ignore[no-untyped-def]
    from relay.auth.accounts import AccountStore

    return AccountStore(cfg.server.data_dir / "accounts")


def _users_add(cfg: configuration.Config, args: argparse.Namespace) -> int:
    from relay.auth.accounts import AccountError

    password = sys.stdin.readline().rstrip("\r\n")
    try:
        name = _accounts(cfg).add(args.address, password)
    except AccountError as exc:
        raise _Failure(str(exc)) from None
    print(f"added {name}")
    return 0


def _users_list(cfg: configuration.Config, args: argparse.Namespace) -> int:
    for name in _accounts(cfg).list():
        print(name)
    return 0


def _users_del(cfg: configuration.Config, args: argparse.Namespace) -> int:
    if not _accounts(cfg).delete(args.address):
        raise _Failure(f"no such account: {args.address}")
    print(f"deleted {args.address}")
    return 0


def _store(cfg: configuration.Config):  # type: ignore[no-untyped-def]
    from relay.queue.store import QueueStore

    path = cfg.server.data_dir / "queue"
    if not (path / "data.mdb").exists():
        return None
    return QueueStore(path, cfg.queue.map_size, cfg.queue.max_map_size)


def _queue_list(cfg: configuration.Config, args: argparse.Namespace) -> int:
    store = _store(cfg)
    items = [e.public() for e in store.envelopes()] if store else []
    if args.json:
        json.dump(items, sys.stdout, indent=1)
        print()
        return 0
    for item in items:
        print(f"{item['id']}  {item['state']:<8} {item['size']:>9}  <{item['sender']}> -> "
              + ", ".join(f"<{r}>" for r in item["recipients"]))  # type: ignore[union-attr]
    print(f"-- {len(items)} message(s)")
    return 0


def _queue_show(cfg: configuration.Config, args: argparse.Namespace) -> int:
    store = _store(cfg)
    found = store.get(args.id) if store else None
    if found is None:
        raise _Failure(f"no such message: {args.id}")
    env, body = found
    print(json.dumps(env.to_record(), indent=1))
    print()
    sys.stdout.flush()
    sys.stdout.buffer.write(body)
    return 0


def _require_store(cfg: configuration.Config):  # type: ignore[no-untyped-def]
    store = _store(cfg)
    if store is None:
        raise _Failure("the queue is empty (no queue database yet)")
    return store


def _queue_flush(cfg: configuration.Config, args: argparse.Namespace) -> int:
    from relay.queue.model import MessageState

    store = _require_store(cfg)
    now = time.time()

    def due_now(env) -> bool:  # type: ignore[no-untyped-def]
        if env.state is MessageState.HOLD:
            return False
        env.next_attempt = now
        return True

    ids = [args.id] if args.id else [e.id for e in store.envelopes()]
    flushed = sum(store.modify(i, due_now) for i in ids)
    if args.id and not flushed:
        raise _Failure(f"no such message, or held: {args.id}")
    print(f"flushed {flushed} message(s)")
    return 0


def _queue_delete(cfg: configuration.Config, args: argparse.Namespace) -> int:
    if not _require_store(cfg).delete(args.id):
        raise _Failure(f"no such message: {args.id}")
    print(f"deleted {args.id}")
    return 0


def _queue_hold(cfg: configuration.Config, args: argparse.Namespace) -> int:
    from relay.queue.model import MessageState

    def hold(env) -> bool:  # type: ignore[no-untyped-def]
        env.state = MessageState.HOLD
        return True

    if not _require_store(cfg).modify(args.id, hold):
        raise _Failure(f"no such message: {args.id}")
    print(f"held {args.id}")
    return 0


def _queue_release(cfg: configuration.Config, args: argparse.Namespace) -> int:
    from relay.queue.model import MessageState

    def release(env) -> bool:  # type: ignore[no-untyped-def]
        if env.state is not MessageState.HOLD:
            return False
        env.state = MessageState.DEFERRED if env.attempts else MessageState.ACTIVE
        env.next_attempt = time.time()
        return True

    if not _require_store(cfg).modify(args.id, release):
        raise _Failure(f"no such held message: {args.id}")
    print(f"released {args.id}")
    return 0
