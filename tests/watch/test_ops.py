"""watch.ops: /metrics shows the counters and gauges moving, /healthz answers, /readyz turns
503 on a failed handshake or an expired certificate, and the endpoint listens on loopback
only unless allowed otherwise."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from meshpipe import logs
from meshpipe.config import Secret
from meshpipe.error_body import mesh_error_from_response
from meshpipe.errors import ConfigError, MeshConnectionError, MeshHTTPError
from meshpipe.retry import RetryPolicy, call_with_retry
from meshpipe.watch.fleet_outbox import STALL_SECONDS
from meshpipe.watch.health import Health
from meshpipe.watch.metrics import WatchMetrics
from meshpipe.watch.ops import build_app, check_listen_host, serve_app, signal_source, start_ops

MAILBOX = "X26ABC1"


class Ops:
    def __init__(self, metrics: WatchMetrics, health: Health, base: str) -> None:
        self.metrics = metrics
        self.health = health
        self.base = base

    async def get(self, path: str) -> tuple[int, str, str]:
        async with aiohttp.ClientSession() as session, session.get(self.base + path) as answer:
            return answer.status, answer.headers["Content-Type"], await answer.text()

    async def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, _, text = await self.get("/metrics")
        assert status == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@pytest.fixture
async def ops() -> AsyncIterator[Ops]:
    metrics, health = WatchMetrics(), Health([MAILBOX])
    runner, port = await start_ops(metrics, health, "127.0.0.1", 0)
    try:
        yield Ops(metrics, health, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def http(status: int) -> MeshHTTPError:
    return mesh_error_from_response(status, b"", method="GET", path="/x")


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted({"mailbox": MAILBOX, **labels}.items()))


async def test_metrics_show_counters_and_gauges_moving(ops: Ops) -> None:
    m = ops.metrics
    m.bytes_sent.labels(mailbox=MAILBOX).inc(100)
    m.retries.labels(mailbox=MAILBOX, cause="http_503").inc()
    m.outbox_backlog.labels(mailbox=MAILBOX).set(7)
    m.transfer_seconds.labels(mailbox=MAILBOX, direction="send").observe(3.0)
    before = await ops.samples()
    assert before[key("meshpipe_sent_bytes_total")] == 100
    assert before[key("meshpipe_retries_total", cause="http_503")] == 1
    assert before[key("meshpipe_outbox_backlog_files")] == 7
    assert before[key("meshpipe_transfer_duration_seconds_count", direction="send")] == 1

    m.bytes_sent.labels(mailbox=MAILBOX).inc(50)
    m.retries.labels(mailbox=MAILBOX, cause="http_503").inc()
    m.outbox_backlog.labels(mailbox=MAILBOX).set(2)
    m.certificate_expiry.labels(mailbox=MAILBOX).set(86400.0)
    after = await ops.samples()
    assert after[key("meshpipe_sent_bytes_total")] == 150
    assert after[key("meshpipe_retries_total", cause="http_503")] == 2
    assert after[key("meshpipe_outbox_backlog_files")] == 2
    assert after[key("meshpipe_client_certificate_expiry_seconds")] == 86400.0


async def test_retries_by_cause_reach_the_metrics(ops: Ops) -> None:
    errors = [http(503), http(503), MeshConnectionError("stalled", timed_out=True)]

    async def flaky() -> str:
        if errors:
            raise errors.pop(0)
        return "done"

    observer = ops.metrics.retry_observer(MAILBOX)
    policy = RetryPolicy(base_delay=0.001, max_delay=0.002, on_retry=observer)
    assert await call_with_retry(flaky, policy, idempotent=True, what="test") == "done"
    samples = await ops.samples()
    assert samples[key("meshpipe_retries_total", cause="http_503")] == 2
    assert samples[key("meshpipe_retries_total", cause="timeout")] == 1


async def test_metrics_are_in_prometheus_text_format(ops: Ops) -> None:
    status, content_type, text = await ops.get("/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    assert "# TYPE meshpipe_sent_bytes_total counter" in text


async def test_healthz_answers_while_not_ready(ops: Ops) -> None:
    status, _, text = await ops.get("/healthz")
    assert (status, text) == (200, '{"alive": true}')


async def test_readyz_follows_the_handshake_and_the_certificate(ops: Ops) -> None:
    status, _, text = await ops.get("/readyz")
    assert status == 503 and "no handshake yet" in text

    mailbox = ops.health[MAILBOX]
    mailbox.handshake_ok, mailbox.last_handshake = True, time.time()
    mailbox.certificate_expires = time.time() + 30 * 86400
    assert (await ops.get("/readyz"))[0] == 200

    mailbox.handshake_ok, mailbox.handshake_error = False, "401 authentication failed"
    status, _, text = await ops.get("/readyz")
    assert status == 503 and "the last handshake failed: 401 authentication failed" in text

    mailbox.handshake_ok, mailbox.handshake_error = True, None
    mailbox.certificate_expires = time.time() - 1
    status, _, text = await ops.get("/readyz")
    assert status == 503 and "client certificate has expired" in text


async def test_readyz_never_shows_a_hidden_secret(ops: Ops) -> None:
    password = "pw-never-on-the-wire-4417"
    logs.hide(Secret(password))
    mailbox = ops.health[MAILBOX]
    mailbox.handshake_ok, mailbox.handshake_error = False, f"refused {password}"
    status, _, text = await ops.get("/readyz")
    assert status == 503
    assert password not in text and logs.REDACTED in text


async def test_only_get_is_answered(ops: Ops) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(ops.base + "/metrics") as answer:
            assert answer.status == 405
        async with session.get(ops.base + "/nothing") as answer:
            assert answer.status == 404


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "192.0.2.10"])
async def test_a_non_loopback_host_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match=r"not a loopback address.*allow_remote_listen = true"):
        await start_ops(WatchMetrics(), Health([MAILBOX]), host, 0)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
async def test_loopback_hosts_are_accepted(host: str) -> None:
    await check_listen_host(host)


async def test_a_host_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(ConfigError, match="does not resolve"):
        await check_listen_host("no-such-host.invalid")


async def test_a_remote_host_is_served_when_allowed() -> None:
    runner, port = await start_ops(WatchMetrics(), Health([]), "0.0.0.0", 0, allow_remote=True)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/readyz") as answer,
        ):
            assert answer.status == 200
    finally:
        await runner.cleanup()


async def test_a_port_in_use_is_a_clear_error(ops: Ops) -> None:
    port = int(ops.base.rsplit(":", 1)[1])
    with pytest.raises(ConfigError, match=rf"cannot listen on 127\.0\.0\.1:{port} .*another port"):
        await start_ops(WatchMetrics(), Health([]), "127.0.0.1", port)


async def test_more_pages_can_be_added_to_the_app() -> None:
    async def tracking(request: web.Request) -> web.Response:
        return web.Response(text="tracking")

    app = build_app(WatchMetrics(), Health([]))
    app.router.add_get("/tracking", tracking)
    runner, port = await serve_app(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/tracking") as answer:
                assert await answer.text() == "tracking"
            async with session.get(f"http://127.0.0.1:{port}/readyz") as answer:
                assert answer.status == 200
    finally:
        await runner.cleanup()


def test_the_overview_signals_carry_the_fleet_s_sends_and_a_stall_past_the_warning() -> None:
    metrics, health = WatchMetrics(), Health([MAILBOX])
    [plain] = signal_source(metrics, health)()
    assert plain.fleet_in_flight is None and plain.fleet_stalled_seconds is None
    metrics.fleet_in_flight.labels(MAILBOX).set(3)
    metrics.fleet_stalled.labels(MAILBOX).set(STALL_SECONDS - 1)  # moving, or not for long
    [moving] = signal_source(metrics, health)()
    assert moving.fleet_in_flight == 3 and moving.fleet_stalled_seconds is None
    metrics.fleet_stalled.labels(MAILBOX).set(STALL_SECONDS + 112.5)
    [stalled] = signal_source(metrics, health)()
    assert stalled.fleet_stalled_seconds == STALL_SECONDS + 112.5
