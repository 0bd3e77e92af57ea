"""``eventstore serve``: the store's tools over HTTP, for the trading
assistant's UTCP client (its Go ``POST /tools`` transport) and any UTCP
client (``GET /utcp``, a UTCP 1.x manual).

    from storectl.service import ServiceSettings, build_app, running
    settings = ServiceSettings(dsn=..., public_url="https://store.example:8443")
    app = build_app(settings)                # an ASGI app (Starlette)
    with running(app, settings) as url:      # in a thread, on a free loopback port
        ...                                  # url = "http://127.0.0.1:PORT"

Modules: ``settings`` (what the operator configures), ``keys`` (API keys,
stored hashed), ``tools`` (every tool: Structs in and out, role, handler),
``errors`` (the store's errors → HTTP status), ``manual`` (UTCP manual and
OpenAPI from the same Structs), ``metrics`` (Prometheus), ``app`` (the
Starlette application), ``command`` (``serve`` and ``keys`` subcommands).
"""

from .app import build_app
from .server import running
from .settings import ServiceSettings

__all__ = ["ServiceSettings", "build_app", "running"]
