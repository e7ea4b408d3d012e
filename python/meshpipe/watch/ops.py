"""The operations HTTP endpoint of ``meshpipe watch`` (aiohttp), what teams scrape and probe:

- ``GET /metrics``: every metric of :class:`~meshpipe.watch.metrics.WatchMetrics` in
  Prometheus' text format (labels are mailbox ids, workflow ids, causes and codes: no
  credential is ever a metric or a label);
- ``GET /healthz``: 200 while the process answers (liveness);
- ``GET /readyz``: 200, or 503 while :meth:`Health.problems` names a problem (a failed
  handshake, an expired client certificate, an open circuit), as JSON
  ``{"ready": false, "problems": [...]}``.

It listens on 127.0.0.1 by default. The metrics tell anyone who can reach the port which
mailboxes and workflows this site runs and when, so an address that is not loopback is
refused unless the caller allows it explicitly (``allow_remote=True``: the ``[watch]``
setting ``allow_remote_listen = true``), for a port a firewall or proxy protects.

:func:`build_app` makes the application and :func:`routes` lists every page in one place.
Given the ledger, it also serves the tracking web view of :mod:`meshpipe.web` (``/``,
``/transfers``...) with this service's signals (polls, handshakes, backlogs, certificate
expiry, reports). On an address that is not loopback the view needs the token
(``$MESHPIPE_WEB_TOKEN``) and is left out without one; ``/metrics``, ``/healthz`` and
``/readyz`` never need it. :func:`start_ops` serves it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshpipe.errors import ConfigError
from meshpipe.logs import redact
from meshpipe.pages.access import load_token
from meshpipe.watch.fleet_outbox import STALL_SECONDS
from meshpipe.watch.health import Health
from meshpipe.watch.metrics import WatchMetrics
from meshpipe.web import LedgerView, MailboxSignals, SignalSource, add_web_pages

logger = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 9464

METRICS: Final = web.AppKey("metrics", WatchMetrics)
HEALTH: Final = web.AppKey("health", Health)

_HEADERS: Final = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


async def metrics_page(request: web.Request) -> web.Response:
    """The Prometheus exposition of every metric."""
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={**_HEADERS, "Content-Type": CONTENT_TYPE_LATEST})


async def healthz_page(request: web.Request) -> web.Response:
    """Liveness: the process and its event loop answer."""
    return web.json_response({"alive": True}, headers=_HEADERS)


async def readyz_page(request: web.Request) -> web.Response:
    """Readiness: 200 when every mailbox is ready, else 503 with the problems."""
    problems = [redact(problem) for problem in request.app[HEALTH].problems()]
    return web.json_response(
        {"ready": not problems, "problems": problems},
        status=503 if problems else 200,
        headers=_HEADERS,
        dumps=lambda value: json.dumps(value, ensure_ascii=False),
    )


def routes() -> list[web.RouteDef]:
    """Every page of the endpoint (GET only; aiohttp answers 405 to other methods)."""
    return [
        web.get("/metrics", metrics_page),
        web.get("/healthz", healthz_page),
        web.get("/readyz", readyz_page),
    ]


def signal_source(metrics: WatchMetrics, health: Health) -> SignalSource:
    """What the web view's overview shows of each mailbox, read from ``metrics`` and
    ``health`` when the page is drawn."""
    registry = metrics.registry

    def gauge(name: str, mailbox: str) -> int | None:
        value = registry.get_sample_value(name, {"mailbox": mailbox})
        return None if value is None else int(value)

    def stalled(mailbox: str) -> float | None:
        value = registry.get_sample_value(
            "meshpipe_fleet_send_stalled_seconds", {"mailbox": mailbox}
        )
        return value if value is not None and value >= STALL_SECONDS else None

    def signals() -> list[MailboxSignals]:
        now = time.time()
        reports: dict[str, dict[str, int]] = {}
        for family in metrics.reports.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    codes = reports.setdefault(sample.labels["mailbox"], {})
                    code = sample.labels["code"]  # summed over the workflows
                    codes[code] = codes.get(code, 0) + int(sample.value)
        return [
            MailboxSignals(
                mailbox=item.mailbox,
                last_poll=item.last_poll,
                last_handshake=item.last_handshake,
                handshake_ok=item.handshake_ok,
                handshake_error=redact(item.handshake_error) if item.handshake_error else None,
                certificate_expires=item.certificate_expires,
                inbox_backlog=gauge("meshpipe_inbox_backlog_messages", item.mailbox),
                outbox_backlog=gauge("meshpipe_outbox_backlog_files", item.mailbox),
                fleet_in_flight=gauge("meshpipe_fleet_sends_in_flight", item.mailbox),
                fleet_stalled_seconds=stalled(item.mailbox),
                reports=reports.get(item.mailbox, {}),
                ready=not item.problems(now),
            )
            for item in health
        ]

    return signals


def build_app(
    metrics: WatchMetrics,
    health: Health,
    *,
    ledger: str | None = None,
    web_token: str | None = None,
) -> web.Application:
    """The application: the pages of :func:`routes`, reading ``metrics`` and ``health``;
    with ``ledger`` (a location), the web view too (``web_token``: it needs that token)."""
    app = web.Application()
    app[METRICS] = metrics
    app[HEALTH] = health
    app.add_routes(routes())
    if ledger is not None:
        view = LedgerView(ledger)

        async def close_view(app: web.Application) -> None:
            await asyncio.to_thread(view.close)

        app.on_cleanup.append(close_view)
        add_web_pages(
            app,
            view,
            signals=signal_source(metrics, health),
            token=web_token,
            open_paths={"/metrics", "/healthz", "/readyz"},
        )
    return app


async def check_listen_host(host: str, *, allow_remote: bool = False) -> None:
    """Refuse (ConfigError) a host that is, or resolves to, anything but loopback, unless
    ``allow_remote``; also refuse a host name that does not resolve."""
    if allow_remote:
        return
    if host in ("", "*"):
        addresses = ["0.0.0.0"]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
        except OSError as error:
            raise ConfigError(
                f"operations endpoint: listen host {host!r} does not resolve ({error}); "
                f"give an address such as {DEFAULT_HOST}"
            ) from None
        addresses = [str(info[4][0]) for info in infos]
    remote = sorted({item for item in addresses if not _is_loopback(item)})
    if remote:
        raise ConfigError(
            f"operations endpoint: listen host {host!r} is not a loopback address "
            f"({', '.join(remote)}): /metrics would tell anyone who can reach it which "
            f"mailboxes and workflows run here. Listen on {DEFAULT_HOST} (listen = "
            f'"{DEFAULT_HOST}:{DEFAULT_PORT}" in [watch], or --listen), or, if a firewall or '
            "proxy protects the port, set allow_remote_listen = true in [watch]"
        )


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


async def serve_app(
    app: web.Application, host: str, port: int, *, allow_remote: bool = False
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host``:``port`` (0: any free port, e.g. in tests) once the host is
    allowed; returns the runner (``await runner.cleanup()`` stops it) and the bound port."""
    await check_listen_host(host, allow_remote=allow_remote)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host or None, port)
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise ConfigError(
            f"operations endpoint: cannot listen on {host}:{port} ({error.strerror or error}); "
            "choose another port (listen in [watch], or --listen; port 0 picks a free one)"
        ) from None
    bound = runner.addresses[0][1]
    return runner, int(bound)


async def start_ops(
    metrics: WatchMetrics,
    health: Health,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    allow_remote: bool = False,
    ledger: str | None = None,
) -> tuple[web.AppRunner, int]:
    """Start the operations endpoint; returns (runner, bound port). Stop it with
    ``await runner.cleanup()``. A non-loopback ``host`` raises ConfigError unless
    ``allow_remote``; a port already taken raises ConfigError too. With ``ledger`` it serves
    the web view as well (see the module's text for its token)."""
    await check_listen_host(host, allow_remote=allow_remote)
    token = load_token(None) if ledger is not None else None
    if ledger is not None and token is None and not _is_loopback(host or "0.0.0.0"):
        logger.warning(
            "the web view is not served on %s: it needs $MESHPIPE_WEB_TOKEN on an address "
            "that is not loopback",
            host,
        )
        ledger = None
    app = await asyncio.to_thread(build_app, metrics, health, ledger=ledger, web_token=token)
    return await serve_app(app, host, port, allow_remote=allow_remote)


__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "HEALTH",
    "METRICS",
    "build_app",
    "check_listen_host",
    "routes",
    "serve_app",
    "signal_source",
    "start_ops",
]
