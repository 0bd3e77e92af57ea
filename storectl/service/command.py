"""The ``serve`` and ``keys`` subcommands (``eventstore serve``, ``eventstore
keys add|list|revoke``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import sys
from typing import Any

import msgspec
import uvicorn

from eventstore import ValidationError
from eventstore.store import EventStore
from storectl.cli.common import add_dsn, add_json, cli_settings, dsn

from .app import build_app
from .keys import ROLES, add_key, list_keys, revoke_key
from .server import uvicorn_config
from .settings import ServiceSettings

__all__ = ["KEYS_DSN_ENV", "add_parser", "run", "run_keys"]

KEYS_DSN_ENV = "EVENTSTORE_KEYS_DSN"


def add_parser(subparsers: Any) -> None:
    """Add ``serve`` and ``keys`` to the CLI's subcommands."""
    serve = subparsers.add_parser(
        "serve", help="serve the store's tools over HTTP (UTCP manual at /utcp)"
    )
    defaults = ServiceSettings(dsn="-")
    serve.add_argument("--host", default=defaults.host, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=defaults.port, help="port (default 8080)")
    serve.add_argument(
        "--public-url",
        metavar="URL",
        help="base URL clients reach the service at, for the manual's absolute URLs "
        "(default: from the host and port)",
    )
    serve.add_argument("--tls-cert", metavar="FILE", help="TLS certificate (PEM): serve https")
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    serve.add_argument(
        "--no-auth",
        action="store_true",
        help="no API keys (every caller is admin): only on a loopback address",
    )
    serve.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes, metavar="N")
    serve.add_argument(
        "--request-timeout",
        type=float,
        default=defaults.request_timeout,
        metavar="S",
        help="per-call time limit in seconds (then 504)",
    )
    serve.add_argument(
        "--db-wait",
        type=float,
        default=defaults.db_wait,
        metavar="S",
        help="wait at most this long for a database connection (then 503)",
    )
    serve.add_argument("--threads", type=int, default=defaults.threads, metavar="N")
    serve.add_argument("--pool-size", type=int, default=defaults.pool_size, metavar="N")
    serve.add_argument(
        "--key-cache-seconds", type=float, default=defaults.key_cache_seconds, metavar="S"
    )
    serve.add_argument(
        "--shutdown-grace",
        type=float,
        default=defaults.shutdown_grace,
        metavar="S",
        help="on SIGTERM, seconds in-flight calls get to finish",
    )
    serve.add_argument(
        "--keys-dsn",
        metavar="DSN",
        default=None,
        help="a member of utcp_operator, only for the admin tools keys.add and keys.revoke "
        f"(default: ${KEYS_DSN_ENV}; none: they answer 503, use `eventstore keys`)",
    )
    add_dsn(serve)
    add_json(serve)  # its access log is JSON lines whatever this says
    serve.set_defaults(handler=run)

    keys = subparsers.add_parser("keys", help="API keys of `serve` (as an operator)")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="make a key; it is printed once, never again")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", choices=ROLES, required=True)
    listing = actions.add_parser("list", help="every key: name, role, created, revoked")
    revoke = actions.add_parser("revoke", help="revoke a key for good")
    revoke.add_argument("name", metavar="NAME")
    for sub in (add, listing, revoke):
        add_dsn(sub)
        add_json(sub)
        sub.set_defaults(handler=run_keys)


def settings_from(args: argparse.Namespace) -> ServiceSettings:
    return ServiceSettings(
        dsn=dsn(args),
        keys_dsn=args.keys_dsn or os.environ.get(KEYS_DSN_ENV) or None,
        host=args.host,
        port=args.port,
        public_url=args.public_url,
        no_auth=args.no_auth,
        max_body_bytes=args.max_body_bytes,
        request_timeout=args.request_timeout,
        db_wait=args.db_wait,
        threads=args.threads,
        pool_size=args.pool_size,
        key_cache_seconds=args.key_cache_seconds,
        tls_certfile=args.tls_cert,
        tls_keyfile=args.tls_key,
        shutdown_grace=args.shutdown_grace,
    )


def check_tls(settings: ServiceSettings) -> None:
    """ValidationError naming the files when the certificate and key cannot
    be loaded (before uvicorn tries, which fails with a traceback)."""
    if settings.tls_certfile is None or settings.tls_keyfile is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_certfile, settings.tls_keyfile
        )
    except (OSError, ssl.SSLError) as exc:
        raise ValidationError(
            f"cannot load the TLS certificate {settings.tls_certfile!r} with its key "
            f"{settings.tls_keyfile!r}: {exc} (both PEM files, readable, the key matching "
            "the certificate)",
            field="tls_certfile",
            operation="serve",
        ) from exc


def run(args: argparse.Namespace) -> int:
    """``eventstore serve``: run until SIGTERM or SIGINT (in-flight calls finish)."""
    settings = settings_from(args)
    check_tls(settings)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("storectl.service.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = uvicorn.Server(uvicorn_config(build_app(settings), settings))
    # uvicorn stops gracefully on SIGTERM/SIGINT, then raises the signal
    # again for the handler it found: with this one, serve returns 0.
    stopped: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def run_keys(args: argparse.Namespace) -> int:
    with EventStore.open(dsn(args), cli_settings()) as store:
        if args.keys_command == "add":
            key, secret = add_key(dsn(args), args.name, args.role)
            if args.json:
                record = msgspec.to_builtins(key)
                print(msgspec.json.encode({**record, "key": secret}).decode())
                return 0
            print(secret)
            print(
                f"key {key.name!r} ({key.role}) added: the line above is its secret, shown only "
                "this once",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            for key in list_keys(store):
                if args.json:
                    print(msgspec.json.encode(key).decode())
                else:
                    revoked = (
                        f"revoked {key.revoked_at:%Y-%m-%d %H:%M:%S%z}"
                        if key.revoked_at
                        else "active"
                    )
                    print(
                        f"{key.name}\t{key.role}\t{key.created_at:%Y-%m-%d %H:%M:%S%z}\t{revoked}"
                    )
        else:
            key = revoke_key(dsn(args), args.name)
            if args.json:
                print(msgspec.json.encode(key).decode())
            else:
                print(f"key {key.name!r} revoked", file=sys.stderr)
    return 0
