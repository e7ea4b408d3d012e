"""The always-on service: for every mailbox, loops that send what its outbox folder holds,
poll its inbox, validate it daily, and stand back while MESH fails.

Per mailbox (one :class:`~meshpipe.client.MeshClient` each, one ledger for all):

- **handshake** at start-up and every ``handshake_interval`` (24 h; after a failed one, again
  after ``poll_interval``): its outcome is the mailbox's readiness (``/readyz``) and
  ``meshpipe_last_handshake_success_timestamp_seconds``;
- **outbox**: a scan every ``scan_interval`` seconds, each complete file sent
  (:class:`~meshpipe.watch.outbox.Outbox`, at most ``send_concurrency`` at once), or, with
  ``fleet``, submitted to the fleet's workers and moved once the ledger shows its send ended
  (:class:`~meshpipe.watch.fleet_outbox.FleetOutbox`);
- **inbox**: a poll every ``poll_interval`` × (1 ± ``poll_jitter``) seconds, and at once
  again when a poll listed a full page (:class:`~meshpipe.watch.inbox.Inbox`).

**Circuit breaker.** A request to MESH that fails after the retry budget (a poll, a
handshake, or a scan whose sends were all deferred) counts a failure; after
``failure_threshold`` in a row the circuit opens (``/readyz`` not ready, ``meshpipe_platform_up
0``) and the mailbox's loops wait, with doubling back-off up to ``max_backoff`` seconds, before
their next try; the first success closes it.

**Crashes.** Nothing needs replaying at start-up: an interrupted send's file is still in the
outbox folder, and the next scan resumes it from the ledger under the same local id; an
interrupted receive's message is still in the MESH inbox (it is acknowledged only after it
was written, verified and recorded), and the next poll resumes or adopts it.

**Stopping** (the ``stop`` event: SIGTERM or SIGINT from the command): no new scan, poll or
transfer starts; transfers in flight get ``shutdown_grace`` seconds to finish, then are
cancelled, which leaves them resumable by the next start (nothing is acknowledged or moved
half-done); then :meth:`WatchService.run` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from meshpipe.client import ClientSettings, MeshClient
from meshpipe.errors import MeshpipeError
from meshpipe.ledger import Ledger, resolve_ledger_location
from meshpipe.retry import RetryingClient
from meshpipe.watch.fleet_outbox import FleetOutbox, fleet_ledger
from meshpipe.watch.health import Health, MailboxHealth
from meshpipe.watch.inbox import Inbox
from meshpipe.watch.metrics import WatchMetrics
from meshpipe.watch.outbox import Outbox
from meshpipe.watch.settings import MailboxSettings, WatchSettings

log = logging.getLogger("meshpipe.watch")


class Breaker:
    """One mailbox's circuit breaker (see the module doc)."""

    def __init__(
        self, settings: WatchSettings, health: MailboxHealth, metrics: WatchMetrics
    ) -> None:
        self.threshold = settings.failure_threshold
        self.max_backoff = settings.max_backoff
        self.health = health
        self._up = metrics.platform_up.labels(health.mailbox)
        self._up.set(1)
        self.failures = 0

    @property
    def open(self) -> bool:
        return self.failures >= self.threshold

    def success(self) -> None:
        if self.open:
            log.warning("%s: MESH answers again; circuit closed", self.health.mailbox)
        self.failures = 0
        self.health.circuit_open = False
        self._up.set(1)

    def failure(self, what: str, error: BaseException) -> None:
        self.failures += 1
        self._up.set(0)
        log.warning("%s: %s failed: %s", self.health.mailbox, what, error)
        if self.failures == self.threshold:
            log.error(
                "%s: %d failures in a row; circuit open, backing off",
                self.health.mailbox,
                self.failures,
            )
        self.health.circuit_open = self.open

    def backoff(self) -> float:
        """Seconds to wait before the next try while open (0 when closed)."""
        if not self.open:
            return 0.0
        ceiling = min(self.max_backoff, 2.0 ** (self.failures - self.threshold + 1))
        return random.uniform(ceiling / 2, ceiling)


class MailboxService:
    """One mailbox's loops (see the module doc). ``location`` is the ledger's location as
    given (with its password: the fleet's queue connects to it), needed with ``fleet``."""

    def __init__(
        self,
        settings: WatchSettings,
        mailbox: MailboxSettings,
        client: MeshClient,
        ledger: Ledger,
        metrics: WatchMetrics,
        health: Health,
        *,
        location: str | None = None,
    ) -> None:
        self.settings = settings
        self.mailbox = mailbox
        self.client = client
        self.health = health[mailbox.mailbox]
        self.metrics = metrics
        self.breaker = Breaker(settings, self.health, metrics)
        self.outbox: Outbox
        if settings.uses_fleet(mailbox):
            self.outbox = FleetOutbox(
                mailbox,
                client,
                ledger,
                metrics,
                location=_given(location),
                settle_seconds=settings.settle_seconds,
                concurrency=settings.send_concurrency,
                chunks_per_job=settings.fleet_chunks_per_job,
            )
        else:
            self.outbox = Outbox(
                mailbox,
                client,
                ledger,
                metrics,
                settle_seconds=settings.settle_seconds,
                concurrency=settings.send_concurrency,
            )
        self.inbox = Inbox(
            mailbox,
            client,
            ledger,
            metrics,
            messages_at_once=settings.send_concurrency,
            state_dir=settings.state_dir,
        )

    async def handshake(self) -> bool:
        try:
            await RetryingClient(self.client).handshake()
        except MeshpipeError as error:
            self.health.handshake_ok, self.health.handshake_error = False, str(error)[:300]
            self.breaker.failure("handshake", error)
            return False
        now = time.time()
        self.health.handshake_ok, self.health.handshake_error = True, None
        self.health.last_handshake = now
        self.metrics.last_handshake_success.labels(self.mailbox.mailbox).set(now)
        self.breaker.success()
        return True

    async def scan_once(self, stopping: asyncio.Event) -> None:
        try:
            outcomes = await self.outbox.run_once(stopping)
        except (MeshpipeError, OSError) as error:
            log.error("%s: the outbox scan failed: %s", self.mailbox.mailbox, error)
            return
        # A submit to the fleet says nothing of MESH: only ended sends count.
        outcomes = [item for item in outcomes if item.outcome != "submitted"]
        deferred = [item for item in outcomes if item.outcome == "deferred"]
        if outcomes and len(deferred) == len(outcomes):
            self.breaker.failure("sending", RuntimeError(deferred[0].reason or "deferred"))
        elif outcomes:
            self.breaker.success()

    async def poll_once(self, stopping: asyncio.Event) -> bool:
        """One poll; True when the inbox listed a full page (poll again at once)."""
        try:
            result = await self.inbox.poll_once(stopping)
        except (MeshpipeError, OSError) as error:
            self.breaker.failure("the inbox poll", error)
            return False
        self.health.last_poll = time.time()
        self.breaker.success()
        return result.full_page

    async def run_once(self, stopping: asyncio.Event) -> None:
        """Handshake, one scan, then polls until the inbox is drained (``--once``)."""
        await self.handshake()
        if self.mailbox.send:
            await self.scan_once(stopping)
        if self.mailbox.receive:
            while await self.poll_once(stopping) and not stopping.is_set():
                pass

    async def run(self, stopping: asyncio.Event) -> None:
        loops = [self._handshakes(stopping)]
        if self.mailbox.send:
            scan = self.settings.scan_interval
            loops.append(self._every(scan, lambda: self.scan_once(stopping), stopping))
        if self.mailbox.receive:
            loops.append(self._polls(stopping))
        async with asyncio.TaskGroup() as group:
            for loop in loops:
                group.create_task(loop)

    async def _handshakes(self, stopping: asyncio.Event) -> None:
        """A handshake now and every ``handshake_interval``; after a failed one, again after
        ``poll_interval`` (or the back-off), so a mailbox that failed once is not left
        unready for a day."""
        while not stopping.is_set():
            if await self.handshake():
                wait = self.settings.handshake_interval
            else:
                wait = max(self.settings.poll_interval, self.breaker.backoff())
            await _sleep(wait, stopping)

    async def _polls(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self._wait_while_open(stopping)
            if stopping.is_set():
                return
            if await self.poll_once(stopping):
                continue  # a full page: poll again at once
            jitter = self.settings.poll_jitter
            wait = self.settings.poll_interval * random.uniform(1 - jitter, 1 + jitter)
            await _sleep(wait, stopping)

    async def _every(
        self,
        interval: float,
        action: Callable[[], Awaitable[object]],
        stopping: asyncio.Event,
    ) -> None:
        """``action`` every ``interval`` seconds, the first at once."""
        while not stopping.is_set():
            await self._wait_while_open(stopping)
            if stopping.is_set():
                return
            await action()
            await _sleep(interval, stopping)

    async def _wait_while_open(self, stopping: asyncio.Event) -> None:
        wait = self.breaker.backoff()
        if wait:
            await _sleep(wait, stopping)


class WatchService:
    """Every mailbox of ``settings``, with ``metrics`` and ``health`` (see the module doc).
    ``client_settings`` (timeouts, retry policy) apply to every mailbox's client; retries are
    counted in the metrics whatever the policy."""

    def __init__(
        self,
        settings: WatchSettings,
        metrics: WatchMetrics,
        health: Health,
        *,
        client_settings: ClientSettings | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.health = health
        self.client_settings = client_settings or ClientSettings()

    async def run(self, stop: asyncio.Event, *, once: bool = False) -> None:
        """Run until ``stop`` is set (or, with ``once``, one round per mailbox), then stop
        within ``shutdown_grace`` seconds."""
        location = resolve_ledger_location(self.settings.ledger, self.settings.state_dir)
        if any(self.settings.uses_fleet(mailbox) for mailbox in self.settings.mailboxes):
            fleet_ledger(location)  # before anything opens: a ConfigError says what to change
        ledger = await asyncio.to_thread(Ledger.open, location)
        try:
            async with contextlib.AsyncExitStack() as stack:
                services = []
                for mailbox in self.settings.mailboxes:
                    client = await stack.enter_async_context(self._client(mailbox))
                    services.append(
                        MailboxService(
                            self.settings,
                            mailbox,
                            client,
                            ledger,
                            self.metrics,
                            self.health,
                            location=location,
                        )
                    )
                await self._run_all(services, stop, once)
        finally:
            await asyncio.to_thread(ledger.close)

    def _client(self, mailbox: MailboxSettings) -> MeshClient:
        base = self.client_settings
        retry = replace(
            base.retry,
            budget=min(base.retry.budget, self.settings.retry_budget),
            on_retry=self.metrics.retry_observer(mailbox.mailbox),
        )
        connections = max(base.max_connections, self.settings.send_concurrency * 2 + 4)
        return MeshClient(mailbox.config, replace(base, retry=retry, max_connections=connections))

    async def _run_all(
        self, services: list[MailboxService], stop: asyncio.Event, once: bool
    ) -> None:
        tasks = [
            asyncio.create_task(
                service.run_once(stop) if once else service.run(stop),
                name=f"watch {service.mailbox.mailbox}",
            )
            for service in services
        ]
        stopped = asyncio.create_task(stop.wait())
        try:
            pending = set(tasks)
            while pending and not stop.is_set():
                await asyncio.wait([*pending, stopped], return_when=asyncio.FIRST_COMPLETED)
                pending = {task for task in tasks if not task.done()}
            if stop.is_set():
                log.warning(
                    "stopping: no new transfers; up to %g s for those in flight",
                    self.settings.shutdown_grace,
                )
                await asyncio.wait(tasks, timeout=self.settings.shutdown_grace)
        finally:
            stopped.cancel()
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for service, outcome in zip(services, results, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, asyncio.CancelledError
            ):
                log.error("%s: stopped by an error: %r", service.mailbox.mailbox, outcome)
                raise outcome


def _given(location: str | None) -> str:
    if location is None:  # Ledger.location hides the password: the fleet could not connect
        raise ValueError("a fleet mailbox needs the ledger's location as given")
    return location


async def _sleep(seconds: float, stopping: asyncio.Event) -> None:
    """Sleep ``seconds``, or until ``stopping`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
