"""``python -m pneumo_core set-admin-password``, ``unlock-sign-in`` and ``audit export|verify|tail``;
``cli_audit`` records what the CLI does in the same audit log as the app (role ``cli``: whoever has a shell
on the server)."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from pneumo_core.errors import AuditError, ThrottleError
from pneumo_core.files import atomic_write_bytes
from pneumo_core.ops.audit import audit_path, chain_status, event, events, record_many, to_csv
from pneumo_core.ops.auth import read_new_password, set_admin_password
from pneumo_core.ops.throttle import throttle_path, unlock

EXIT_OK, EXIT_FAIL = 0, 1
CLI_ROLE = "cli"
_warned = False


def cli_audit(action: str, result: str, **fields: Any) -> None:
    """Record one CLI event; a log that cannot be written is said once on stderr and does not stop the command."""
    cli_audit_many(action, [{"result": result, **fields}])


def cli_audit_many(action: str, items: Iterable[dict[str, Any]]) -> None:
    global _warned
    try:
        record_many([event(action, role=CLI_ROLE, actor=CLI_ROLE, session=f"cli:{os.getpid()}", **f) for f in items])
    except AuditError as exc:
        if not _warned:
            print(f"pneumo_core: warning: {exc} (set PNEUMO_AUDIT_DB to a writable file)", file=sys.stderr)
            _warned = True


def file_sha256(path: str | Path) -> str | None:
    """sha256 of a file's bytes (what the audit log identifies a film by), None when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def cmd_set_admin_password(args: argparse.Namespace) -> int:
    path = set_admin_password(read_new_password(stdin=args.password_stdin), args.secrets)
    cli_audit("set_admin_password", "succeeded")
    print(f"Admin password hash (argon2id) written to {path}. Sessions signed in with the old password end.")
    return EXIT_OK


def cmd_unlock_sign_in(args: argparse.Namespace) -> int:
    try:
        n = unlock()
    except ThrottleError as exc:
        print(f"pneumo_core: {exc}", file=sys.stderr)
        cli_audit("unlock_sign_in", "error")
        return EXIT_FAIL
    cli_audit("unlock_sign_in", "succeeded", detail=f"{n} clients")
    print(f"Sign-in backoff cleared for {n} client(s) in {throttle_path()}; every client may try again now.")
    return EXIT_OK


def cmd_audit_export(args: argparse.Namespace) -> int:
    rows = events(since=args.since, until=args.until, actions=args.action or None, newest_first=False)
    data = to_csv(rows)
    if args.out == "-":
        sys.stdout.write(data.decode("utf-8"))
    else:
        atomic_write_bytes(Path(args.out), data)
        print(f"{len(rows)} events written to {args.out}", file=sys.stderr)
    cli_audit("export_audit", "succeeded", detail=f"{len(rows)} events")
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    n, broken, newest = chain_status()
    if broken is None:
        print(f"{audit_path().name}: keyed hash chain intact over {n} events; newest hash {newest} "
              f"(keep this line elsewhere: removing the newest events is only seen against it).")
        return EXIT_OK
    print(f"{audit_path().name}: the hash chain breaks at event {broken} (after {n} intact events): an event "
          f"was edited, inserted or deleted, or the log was written with another key (another server's, or "
          f"before the chain was keyed).", file=sys.stderr)
    return EXIT_FAIL


def cmd_audit_tail(args: argparse.Namespace) -> int:
    for e in reversed(events(limit=args.n)):
        prob = f"{e['probability']:.3f}" if e["probability"] is not None else "-"
        print(f"{e['time'][:23]}  {e['role']:7} {e['action']:18} {e['result']:10} {prob:6} "
              f"{e['model_version'] or '-':18} {(e['input_sha256'] or '-')[:12]}  {e['detail'] or ''}")
    return EXIT_OK


def add_trust_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("set-admin-password", help="set the app's admin password (stored as an argon2id hash)")
    p.add_argument("--secrets", help="secrets file (default: .streamlit/secrets.toml beside app.py, "
                                     "or $PNEUMO_SECRETS)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    p.set_defaults(func=cmd_set_admin_password)

    p = sub.add_parser("unlock-sign-in", help="let every client try the admin password again now "
                                              "(clears the sign-in backoff; $PNEUMO_SIGNIN_DB)")
    p.set_defaults(func=cmd_unlock_sign_in)

    p = sub.add_parser("audit", help="the audit log: export as CSV, verify its hash chain, show the latest events")
    asub = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    q = asub.add_parser("export", help="events as CSV")
    q.add_argument("--out", required=True, help="CSV file, or - for stdout")
    q.add_argument("--since", help="ISO time, e.g. 2026-11-01 (UTC)")
    q.add_argument("--until", help="ISO time, exclusive")
    q.add_argument("--action", action="append", help="only this action (repeatable)")
    q.set_defaults(func=cmd_audit_export)
    q = asub.add_parser("verify", help="check that no event was edited or deleted")
    q.set_defaults(func=cmd_audit_verify)
    q = asub.add_parser("tail", help="the latest events")
    q.add_argument("-n", type=int, default=20)
    q.set_defaults(func=cmd_audit_tail)
