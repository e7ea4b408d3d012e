"""The Prometheus metrics of ``meshpipe watch``: declared once here, in a registry of their
own (so two services in one process, as in the tests, never share counts), updated by the
outbox, the inbox and the service, rendered by the operations endpoint.

Every metric is labelled by ``mailbox`` (the local mailbox id). Names follow Prometheus'
conventions: ``_total`` for counters, base units (bytes, seconds), Unix timestamps for
"time of the last ..." gauges, so an alert is ``time() - meshpipe_last_poll_success_timestamp
_seconds > 900``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Transfer durations from seconds to hours (a 50 GB send takes minutes).
DURATION_BUCKETS: Final = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)

#: The outcomes a transfer is counted under.
SEND_OUTCOMES: Final = ("sent", "already-sent", "failed")
RECEIVE_OUTCOMES: Final = ("received", "already-delivered", "failed", "refused")


class WatchMetrics:
    """The metrics of one watch service, in ``registry`` (a new one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.bytes_sent = Counter(
            "meshpipe_sent_bytes", "File bytes sent (uncompressed)", ["mailbox"], registry=r
        )
        self.bytes_received = Counter(
            "meshpipe_received_bytes", "File bytes received (as written)", ["mailbox"], registry=r
        )
        self.chunks_sent = Counter(
            "meshpipe_sent_chunks", "Chunks accepted by MESH", ["mailbox"], registry=r
        )
        self.chunks_received = Counter(
            "meshpipe_received_chunks", "Chunks downloaded and verified", ["mailbox"], registry=r
        )
        self.transfers = Counter(
            "meshpipe_transfers",
            "Transfers finished, by direction (send, receive) and outcome",
            ["mailbox", "direction", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "meshpipe_retries",
            "Requests tried again, by cause (e.g. connection, timeout, http_503)",
            ["mailbox", "cause"],
            registry=r,
        )
        self.transfer_seconds = Histogram(
            "meshpipe_transfer_duration_seconds",
            "Duration of finished transfers",
            ["mailbox", "direction"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "meshpipe_outbox_backlog_files",
            "Files in the outbox folder waiting to be sent (or being sent)",
            ["mailbox"],
            registry=r,
        )
        self.fleet_in_flight = Gauge(
            "meshpipe_fleet_sends_in_flight",
            "Sends handed to the fleet's workers (fleet = true) whose end the ledger has not shown",
            ["mailbox"],
            registry=r,
        )
        self.fleet_stalled = Gauge(
            "meshpipe_fleet_send_stalled_seconds",
            "Longest time a send handed to the fleet has shown no progress in the ledger "
            "(0: none in flight); growing: no worker is taking the mailbox's jobs",
            ["mailbox"],
            registry=r,
        )
        self.inbox_backlog = Gauge(
            "meshpipe_inbox_backlog_messages",
            "Messages in the MESH inbox at the last poll",
            ["mailbox"],
            registry=r,
        )
        self.reports = Counter(
            "meshpipe_reports_received",
            "Reports received (non-delivery, error), by workflow and MESH status code",
            ["mailbox", "workflow_id", "code"],
            registry=r,
        )
        self.last_poll_success = Gauge(
            "meshpipe_last_poll_success_timestamp_seconds",
            "Unix time of the last poll of the inbox that succeeded",
            ["mailbox"],
            registry=r,
        )
        self.last_received = Gauge(
            "meshpipe_last_message_received_timestamp_seconds",
            "Unix time the last message of each workflow was received",
            ["mailbox", "workflow_id"],
            registry=r,
        )
        self.last_handshake_success = Gauge(
            "meshpipe_last_handshake_success_timestamp_seconds",
            "Unix time of the last handshake (mailbox validation) that succeeded",
            ["mailbox"],
            registry=r,
        )
        self.platform_up = Gauge(
            "meshpipe_platform_up",
            "1 when the last request to MESH succeeded, 0 while it fails (circuit open)",
            ["mailbox"],
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "meshpipe_client_certificate_expiry_seconds",
            "Seconds until the client certificate expires (negative: expired)",
            ["mailbox"],
            registry=r,
        )

    def retry_observer(self, mailbox: str) -> Callable[[str], None]:
        """What to give a mailbox's retry policy as ``on_retry``, so its retries are counted
        by cause: ``RetryPolicy(on_retry=metrics.retry_observer(mailbox))``."""
        retries = self.retries

        def count(cause: str) -> None:
            retries.labels(mailbox=mailbox, cause=cause).inc()

        return count
