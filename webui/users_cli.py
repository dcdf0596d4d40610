"""``python -m webui users add|list|remove|passwd``: the accounts of ``--auth-file`` (:mod:`webui.accounts`).

    python -m webui users add alice --auth-file data/users.json        # password asked twice
    printf '%s\\n' "$PW" | python -m webui users add bob --password-stdin --auth-file data/users.json
    python -m webui users list --auth-file data/users.json
    python -m webui users passwd alice --auth-file data/users.json     # ends alice's sign-in sessions
    python -m webui users remove bob --auth-file data/users.json

The file's default is ``data/users.json`` of the project (the default ``--data-dir``);
start the server with the same ``--auth-file``. A running server picks the changes up
at the next request, no restart needed.
"""
from __future__ import annotations

import argparse
import getpass
import sys
from typing import Sequence, TextIO

from .accounts import AccountError, AuthFile, AuthFileError, check_password
from .settings import PROJECT_ROOT

DEFAULT_AUTH_FILE = PROJECT_ROOT / "data" / "users.json"


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m webui users``."""
    p = argparse.ArgumentParser(prog="python -m webui users",
                                description="Manage the accounts of the page (server flag --auth-file FILE).")
    sub = p.add_subparsers(dest="command", required=True, metavar="{add,list,remove,passwd}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--auth-file", default=DEFAULT_AUTH_FILE, metavar="FILE",
                        help=f"the accounts file (default: {DEFAULT_AUTH_FILE})")
    for name, what in (("add", "add a user"), ("passwd", "set a user's password (ends their sessions)")):
        c = sub.add_parser(name, parents=[common], help=what, description=what)
        c.add_argument("name", help="user name: 1 to 64 letters, digits or . _ @ -")
        c.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of standard input (for scripts)")
    c = sub.add_parser("remove", parents=[common], help="remove a user (their conversations stay stored)")
    c.add_argument("name")
    sub.add_parser("list", parents=[common], help="list the users")
    return p


def read_password(from_stdin: bool, stdin: TextIO) -> str:
    """The new password: the first line of ``stdin`` (without its line break), or asked twice
    with ``getpass``. Raises :class:`AccountError` when the two differ or it is too short."""
    if from_stdin:
        password = stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise AccountError("the two passwords differ: run the command again")
    return check_password(password)


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    """Run one command. Returns 0 on success, 1 on bad input or an unreadable file (with a message
    on stderr naming the fix); argparse exits with 2 on a bad command line."""
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    try:
        accounts = AuthFile.load(args.auth_file, missing_ok=args.command == "add")
        if args.command == "list":
            for user in sorted(accounts.users.values(), key=lambda u: u.name):
                print(f"{user.name}\t{user.created}", file=out)
            return 0
        if args.command in ("add", "passwd"):
            if args.command == "passwd":
                accounts.set_password(args.name, read_password(args.password_stdin, stdin or sys.stdin))
            else:
                from .accounts import check_name

                check_name(args.name)
                if args.name in accounts.users:
                    raise AccountError(f"user {args.name!r} exists already: change the password with "
                                       f"'python -m webui users passwd {args.name}'")
                accounts.add(args.name, read_password(args.password_stdin, stdin or sys.stdin))
        elif args.command == "remove":
            accounts.remove(args.name)
        accounts.save()
    except (AccountError, AuthFileError, OSError) as exc:
        print(f"python -m webui users: error: {exc}", file=sys.stderr)
        return 1
    done = {"add": "added", "passwd": "changed the password of", "remove": "removed"}[args.command]
    print(f"{done} {args.name} in {args.auth_file} (start the server with --auth-file {args.auth_file})", file=out)
    return 0
