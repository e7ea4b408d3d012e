"""An asyncio MESH client on aiohttp: every endpoint a mailbox uses, each one request.

One :class:`MeshClient` owns one ``aiohttp.ClientSession``, created inside the running event
loop (``async with MeshClient(config) as client``), with explicit connector limits and timeouts.
Every request carries a fresh NHSMESH token and ``Accept: application/vnd.mesh.v2+json``.
Error answers become :class:`meshpipe.errors.MeshHTTPError` (HTTP status, MESH error code,
kind, message id; parsed by meshpipe.error_body), network failures
:class:`meshpipe.errors.MeshConnectionError`; ``CancelledError`` passes through.
Bodies are sent from any buffer in pieces of at most 1 MiB (one large write costs asyncio on
Python 3.11 about 8x the CPU) and downloads are streamed to a sink, never held whole. A chunk
body may be paced (:class:`BodyPacing`): an in-order upload holds a piece until its turn and is
told when the whole body has reached the far end of the connection (:func:`until_delivered`).

Nothing here retries or orchestrates: :mod:`meshpipe.retry` decides what is tried again
(``RetryingClient`` for the endpoints safe to repeat), :mod:`meshpipe.transfer` sends and
receives whole files, :mod:`meshpipe.sync` offers all of it without an event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import ssl
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import SimpleNamespace, TracebackType
from typing import Any, Final, Protocol, Self
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp import payload as aiohttp_payload
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict
from typing_extensions import Buffer

from meshpipe._meshpipe import __version__
from meshpipe.auth import TokenSource
from meshpipe.config import MeshConfig, RetryPolicy
from meshpipe.error_body import mesh_error_from_response
from meshpipe.errors import MeshConnectionError, MeshHTTPError, MeshProtocolError
from meshpipe.headers import SendHeaders, format_chunk_range
from meshpipe.models import Endpoint, MessageMetadata, ReportMessage, RichMessage, TrackingInfo
from meshpipe.units import MiB

log = logging.getLogger("meshpipe.client")

#: Largest single write handed to the socket.
WRITE_PIECE_SIZE: Final = 1 * MiB
ACCEPT_V2: Final = "application/vnd.mesh.v2+json"
CLIENT_VERSION: Final = f"meshpipe=={__version__}"
PREFIX: Final = "/messageexchange"
_ERROR_BODY_LIMIT: Final = 64 * 1024


#: Longest pause between two looks at a connection's queue of unacknowledged bytes.
_DELIVERY_POLL_MAX: Final = 0.005


def _unacknowledged(sock: object) -> int | None:
    """Bytes the kernel holds for this TCP socket that the peer has not acknowledged (Linux
    ``SIOCOUTQ``), or None where that cannot be asked."""
    if not sys.platform.startswith("linux") or not hasattr(sock, "fileno"):
        return None
    import fcntl
    import termios

    try:
        answer = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return None
    return int(struct.unpack("i", answer)[0])


async def until_delivered(transport: asyncio.BaseTransport | None) -> None:
    """Return once every byte written to ``transport`` has left this process and, on Linux,
    been acknowledged by the far end's TCP (the server, or the proxy or load balancer that
    terminates the connection): the kernel's queue of unacknowledged bytes is empty. Elsewhere,
    once the bytes are handed to the kernel. Polls, at most every 5 ms."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    pause = 0.0002
    while True:
        buffered = (
            transport.get_write_buffer_size()
            if isinstance(transport, asyncio.WriteTransport)
            else 0
        )
        if buffered == 0 and not _unacknowledged(sock):
            return
        await asyncio.sleep(pause)
        pause = min(pause * 2, _DELIVERY_POLL_MAX)


class BodyPacing(Protocol):
    """How an in-order upload paces one chunk body (meshpipe.transfer.order implements it)."""

    async def before_piece(self, last: bool, transport: asyncio.BaseTransport | None) -> None:
        """Called before each piece is written (``last`` for the final one); may wait for the
        body's turn, or raise to abandon the request."""

    def delivered(self) -> None:
        """Called once the whole body has reached the far end of the connection."""


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Connection pool, timeouts (seconds) and retry policy of one client (the policy is
    applied by meshpipe.retry and meshpipe.transfer; the client itself never retries).

    ``connect_timeout`` [15 s] bounds making a connection (TCP and TLS). ``request_timeout``
    [30 s] bounds a whole control request, from connecting to the last byte of the answer:
    handshake, inbox and outbox listings, count, HEAD, tracking, lookup, acknowledge, ping.
    Chunk uploads and downloads have no fixed time limit but a stall timeout: when no bytes
    move for ``stall_timeout`` [60 s] (no piece of the body is accepted by the socket, or no
    byte of the answer arrives), the transfer is aborted, and retried by the caller's policy;
    60 s is long for a healthy server, even one storing a 100 MB chunk before it answers.
    ``transfer_timeout`` [1800 s] is a backstop for a whole chunk (a 100 MiB chunk at
    0.5 Mbit/s) against a server that trickles bytes to defeat the stall timeout.
    The default ``retry`` policy rides out a 60 s outage (:class:`meshpipe.config.RetryPolicy`).
    """

    max_connections: int = 16
    connect_timeout: float = 15.0
    stall_timeout: float = 60.0
    request_timeout: float = 30.0
    transfer_timeout: float = 1800.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    user_agent: str = CLIENT_VERSION

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        for name in ("connect_timeout", "stall_timeout", "request_timeout", "transfer_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


class BufferPayload(aiohttp_payload.Payload):
    """A request body over any buffer (e.g. an engine Chunk), written in ≤ 1 MiB pieces with
    no copy. The memoryview is released by :meth:`release` (or when the payload is freed).
    With ``pacing``, each piece waits for ``pacing.before_piece`` and, after the last piece,
    ``pacing.delivered`` is called once the body has reached the far end of the connection."""

    def __init__(
        self,
        buffer: Buffer,
        *,
        piece_size: int = WRITE_PIECE_SIZE,
        content_type: str = "application/octet-stream",
        stall_timeout: float | None = None,
        pacing: BodyPacing | None = None,
    ) -> None:
        view = memoryview(buffer)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        super().__init__(view, content_type=content_type)
        self._view: memoryview | None = view
        self._size = view.nbytes
        self._piece_size = piece_size
        self._stall_timeout = stall_timeout
        self._pacing = pacing
        self.bytes_written = 0
        #: Set when a piece could not be handed to the socket within ``stall_timeout``.
        self.stalled = False

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a binary chunk payload cannot be decoded")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        view = self._view
        if view is None:
            raise RuntimeError("payload already released")
        end = view.nbytes if content_length is None else min(content_length, view.nbytes)
        self.bytes_written = 0
        pacing = self._pacing
        if pacing is not None and end == 0:
            await pacing.before_piece(True, writer.transport)
        for offset in range(0, end, self._piece_size):
            stop = min(offset + self._piece_size, end)
            if pacing is not None:
                await pacing.before_piece(stop == end, writer.transport)
            piece = view[offset:stop]
            size = piece.nbytes
            try:
                async with asyncio.timeout(self._stall_timeout):
                    await writer.write(piece)
            except TimeoutError:
                self.stalled = True
                raise
            finally:
                piece.release()
            self.bytes_written += size
        if pacing is not None:
            try:
                async with asyncio.timeout(self._stall_timeout):
                    await until_delivered(writer.transport)
            except TimeoutError:
                self.stalled = True
                raise
            pacing.delivered()

    def release(self) -> None:
        if self._view is not None:
            self._view.release()
            self._view = None
            self._value = None


@dataclass(slots=True)
class _Attempt:
    """What one request went through, noted by the session's trace hooks."""

    new_connection: bool = False


async def _note_new_connection(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: object
) -> None:
    attempt = getattr(context, "trace_request_ctx", None)
    if isinstance(attempt, _Attempt):
        attempt.new_connection = True


_TLS_HINT: Final = (
    "check --cert/--key/--ca (MESH_CLIENT_CERT, MESH_CLIENT_KEY, MESH_CA_CERT): the client "
    "certificate must be one this server accepts"
)


def _ssl_error_in(error: BaseException) -> ssl.SSLError | None:
    """An SSL error (other than the server's certificate failing our checks) behind ``error``."""
    seen: BaseException | None = error
    for _ in range(6):
        if seen is None:
            return None
        os_error = getattr(seen, "os_error", None)  # aiohttp's connector errors wrap it
        if isinstance(os_error, ssl.SSLError):
            seen = os_error
        if isinstance(seen, ssl.SSLCertVerificationError):
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass(frozen=True, slots=True)
class _Failure:
    """How to describe a failed request: what it was, over TLS or not, and its limits."""

    what: str
    settings: ClientSettings
    tls: bool
    attempt: _Attempt | None = None
    time_limit: float | None = None
    payload: BufferPayload | None = None

    def translate(self, error: BaseException) -> MeshConnectionError:
        """A MeshConnectionError saying what failed and what to check (``request_sent`` is
        False when no connection was made)."""
        what, settings = self.what, self.settings
        if self.payload is not None and self.payload.stalled:
            return MeshConnectionError(
                f"{what} stalled: the server took no bytes of the body for "
                f"{settings.stall_timeout:g}s (the stall timeout); aborted, to be retried",
                timed_out=True,
            )
        if isinstance(error, aiohttp.ConnectionTimeoutError):
            return MeshConnectionError(
                f"{what} failed: no connection within {settings.connect_timeout:g}s; check the "
                "MESH URL and network",
                request_sent=False,
                timed_out=True,
            )
        if isinstance(error, aiohttp.SocketTimeoutError):
            return MeshConnectionError(
                f"{what} stalled: no bytes from the server for {settings.stall_timeout:g}s (the "
                "stall timeout); aborted, to be retried",
                timed_out=True,
            )
        if isinstance(error, TimeoutError):
            limit = self.time_limit or settings.request_timeout
            return MeshConnectionError(
                f"{what} timed out: no complete answer within {limit:g}s; check the network or "
                "retry later",
                timed_out=True,
            )
        connected = not isinstance(error, aiohttp.ClientConnectorError)
        detail = str(error) or type(error).__name__
        if isinstance(error, aiohttp.ClientConnectorCertificateError):
            return MeshConnectionError(
                f"{what} failed: the server's TLS certificate is not trusted ({detail}); check "
                "--ca (MESH_CA_CERT) and the host name in the MESH URL",
                request_sent=False,
            )
        if self.tls:
            refusal = _ssl_error_in(error)
            reason = getattr(refusal, "reason", None) or str(refusal)
            if refusal is not None and reason == "WRONG_VERSION_NUMBER":
                return MeshConnectionError(
                    f"{what} failed: the server did not answer in TLS ({refusal}); check the "
                    "MESH URL's scheme (https://) and port",
                    request_sent=connected,
                )
            if refusal is not None:
                return MeshConnectionError(
                    f"{what} failed: the server refused the TLS handshake: {reason}; {_TLS_HINT}",
                    request_sent=connected,
                )
            fresh = self.attempt is not None and self.attempt.new_connection
            if fresh and isinstance(error, aiohttp.ServerDisconnectedError | ConnectionResetError):
                return MeshConnectionError(
                    f"{what} failed: the server refused the TLS handshake: it closed a new "
                    "connection without answering, as a server does when it refuses a missing "
                    f"or untrusted client certificate; {_TLS_HINT}"
                )
        return MeshConnectionError(
            f"{what} failed: {type(error).__name__}: {detail}; check the MESH URL and network",
            request_sent=connected,
        )


_CONNECTION_ERRORS: Final = (aiohttp.ClientError, TimeoutError, OSError)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class _SinkError(Exception):
    """Carries an error raised by a download's sink past the network-error translation."""


@dataclass(frozen=True, slots=True)
class DownloadedChunk:
    """What a chunk download said: its metadata (headers) and the bytes received."""

    metadata: MessageMetadata
    status: int
    bytes_received: int


class MeshClient:
    """Async MESH client for one mailbox. Use ``async with MeshClient(config) as client``."""

    def __init__(self, config: MeshConfig, settings: ClientSettings | None = None) -> None:
        self.config = config
        self.settings = settings or ClientSettings()
        self._tokens = TokenSource(
            config.mailbox, config.password.reveal(), config.shared_key.reveal()
        )
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"MeshClient(url={self.config.url!r}, mailbox={self.config.mailbox!r})"

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Create the session in the running loop (done by ``async with``)."""
        if self._session is not None and not self._session.closed:
            return
        self._loop = asyncio.get_running_loop()
        tracing = aiohttp.TraceConfig()
        tracing.on_connection_create_end.append(_note_new_connection)
        connector = aiohttp.TCPConnector(
            limit=self.settings.max_connections,
            limit_per_host=self.settings.max_connections,
            ssl=self.config.ssl_context(),
            enable_cleanup_closed=True,
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.settings.connect_timeout,
            sock_connect=self.settings.connect_timeout,
            sock_read=self.settings.stall_timeout,
        )
        self._session = aiohttp.ClientSession(
            base_url=None,
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            raise_for_status=False,
            trace_configs=[tracing],
            headers={"User-Agent": self.settings.user_agent, "Accept-Encoding": "identity"},
        )
        # aiohttp silently re-sends an idempotent request once when a kept-alive connection
        # drops, with the same headers: the same NHSMESH token, which live MESH refuses (403,
        # one token per request). Our own retries (retry.py) make a fresh token every time.
        if hasattr(self._session, "_retry_connection"):
            self._session._retry_connection = False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            raise RuntimeError("MeshClient is not open: use `async with MeshClient(config)`")
        return self._session

    @property
    def mailbox(self) -> str:
        return self.config.mailbox

    # --- plumbing ----------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.config.url}{path}"

    def _headers(
        self, extra: Mapping[str, str] | None = None, *, auth: bool = True
    ) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict({"Accept": ACCEPT_V2})
        if auth:
            headers["Authorization"] = self._tokens()
        if extra:
            headers.update(extra)
        return headers

    async def _raise_for(
        self, response: aiohttp.ClientResponse, method: str, path: str, message_id: str | None
    ) -> MeshHTTPError:
        try:
            body = await response.content.read(_ERROR_BODY_LIMIT)
        except _CONNECTION_ERRORS:
            body = b""
        return mesh_error_from_response(
            response.status,
            body,
            method=method,
            path=path,
            message_id=message_id,
            retry_after=_retry_after(response.headers.get("Retry-After")),
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | int] | None = None,
        data: Any = None,
        auth: bool = True,
        expect: tuple[int, ...] = (200,),
        message_id: str | None = None,
        time_limit: float | None = None,
    ) -> tuple[int, CIMultiDict[str], bytes]:
        """One request, no retry: (status, headers, body) for an expected status, else the
        specific MeshHTTPError. ``path`` starts with ``/``."""
        session = self.session
        limit = time_limit or self.settings.request_timeout
        attempt = _Attempt()
        try:
            async with asyncio.timeout(limit):
                async with session.request(
                    method,
                    self._url(path),
                    headers=self._headers(headers, auth=auth),
                    params=params,
                    data=data,
                    trace_request_ctx=attempt,
                ) as response:
                    if response.status not in expect:
                        raise await self._raise_for(response, method, path, message_id)
                    body = await response.read()
                    return response.status, CIMultiDict(response.headers), body
        except _CONNECTION_ERRORS as error:
            failure = self._failure(
                f"{method} {path}",
                attempt,
                time_limit=limit,
                payload=data if isinstance(data, BufferPayload) else None,
            )
            raise failure.translate(error) from error

    def _failure(
        self,
        what: str,
        attempt: _Attempt | None = None,
        *,
        time_limit: float | None = None,
        payload: BufferPayload | None = None,
    ) -> _Failure:
        return _Failure(
            what,
            self.settings,
            tls=self.config.url.startswith("https://"),
            attempt=attempt,
            time_limit=time_limit,
            payload=payload,
        )

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request whose answer is JSON (None for an empty body)."""
        _, _, body = await self.request(method, path, **kwargs)
        if not body.strip():
            return None
        try:
            return json.loads(body)
        except ValueError:
            raise MeshProtocolError(
                f"{method} {path} answered with a body that is not JSON"
            ) from None

    def _next_path(self, link: str) -> str:
        """A ``links.next`` value as a path: MESH gives it relative (mesh-client bug #60)."""
        if link.startswith(("http://", "https://")):
            parts = urlsplit(link)
            return parts.path + (f"?{parts.query}" if parts.query else "")
        return link if link.startswith("/") else f"/{link}"

    def _mailbox_path(self, suffix: str = "") -> str:
        return f"{PREFIX}/{quote(self.mailbox)}{suffix}"

    # --- endpoints ---------------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        """``GET /_ping`` (no auth): liveness; the server's own status dict."""
        data = await self._json("GET", f"{PREFIX}/_ping", auth=False)
        return data if isinstance(data, dict) else {}

    async def handshake(self) -> None:
        """Validate the mailbox and credentials (do it once a day); raises on failure."""
        headers = {
            "mex-ClientVersion": self.settings.user_agent,
            "mex-OSName": platform.system() or "unknown",
            "mex-OSVersion": platform.release() or "unknown",
            "mex-OSArchitecture": platform.machine() or "unknown",
            "mex-JavaVersion": "N/A",
        }
        await self._json("POST", self._mailbox_path(), headers=headers)

    async def send_message(
        self,
        headers: SendHeaders,
        body: Buffer,
        *,
        chunk_count: int = 1,
        content_encoding: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> str:
        """``POST /outbox``: a whole message, or chunk 1 of ``chunk_count``, with ``headers``
        as given (check them first with ``headers.validate()``); returns the message id. Never
        retried here: re-posting could duplicate the message (retry.post_first_chunk_safely)."""
        request_headers = headers.to_request()
        if chunk_count > 1:
            request_headers["mex-Chunk-Range"] = format_chunk_range(1, chunk_count)
        if content_encoding:
            request_headers["Content-Encoding"] = content_encoding
        if extra_headers:
            request_headers.update(extra_headers)
        payload = BufferPayload(
            body,
            content_type=request_headers["Content-Type"],
            stall_timeout=self.settings.stall_timeout,
        )
        try:
            _, _, response = await self.request(
                "POST",
                self._mailbox_path("/outbox"),
                headers=request_headers,
                data=payload,
                expect=(200, 202),
                time_limit=self.settings.transfer_timeout,
            )
        finally:
            payload.release()
        try:
            data = json.loads(response)
            message_id = data.get("message_id") or data.get("messageID")
        except (ValueError, AttributeError):
            message_id = None
        if not isinstance(message_id, str) or not message_id:
            raise MeshProtocolError("MESH accepted the message but returned no message id")
        return message_id

    async def send_chunk(
        self,
        message_id: str,
        number: int,
        chunk_count: int,
        body: Buffer,
        *,
        content_encoding: str | None = None,
        pacing: BodyPacing | None = None,
    ) -> None:
        """``POST /outbox/{id}/{n}`` for chunk n ≥ 2 (no retry here; idempotent, so the caller
        may retry it); ``pacing`` paces the body's pieces (an in-order upload)."""
        if number < 2:
            raise ValueError("chunk 1 is sent by send_message")
        headers = {
            "mex-Chunk-Range": format_chunk_range(number, chunk_count),
            "Content-Type": "application/octet-stream",
        }
        if content_encoding:
            headers["Content-Encoding"] = content_encoding
        payload = BufferPayload(body, stall_timeout=self.settings.stall_timeout, pacing=pacing)
        try:
            await self.request(
                "POST",
                self._mailbox_path(f"/outbox/{quote(message_id)}/{number}"),
                headers=headers,
                data=payload,
                expect=(200, 202),
                message_id=message_id,
                time_limit=self.settings.transfer_timeout,
            )
        finally:
            payload.release()

    async def iter_inbox_pages(
        self, *, workflow_filter: str | None = None, max_results: int = 500
    ) -> AsyncIterator[list[str]]:
        """Pages of message ids ready to download, following ``links.next`` (a relative path)."""
        params: dict[str, str | int] = {"max_results": max_results}
        if workflow_filter:
            params["workflow_filter"] = workflow_filter
        path: str | None = self._mailbox_path("/inbox")
        while path is not None:
            data = await self._json("GET", path, params=params)
            if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
                raise MeshProtocolError("inbox listing has no 'messages' list")
            yield [str(message) for message in data["messages"]]
            following = (data.get("links") or {}).get("next")
            if following:
                path = self._next_path(str(following))
                params = {}
            else:
                path = None

    async def list_inbox(
        self, *, workflow_filter: str | None = None, max_results: int = 500
    ) -> list[str]:
        """Every message id in the inbox (all pages), optionally filtered by workflow
        (``X``, ``!X``, ``X*``, ``!X*``, ``*X*``, ``!*X*``)."""
        ids: list[str] = []
        async for page in self.iter_inbox_pages(
            workflow_filter=workflow_filter, max_results=max_results
        ):
            ids.extend(page)
        return ids

    async def inbox_count(self) -> int:
        """``GET /count`` (deprecated by MESH, still served)."""
        data = await self._json("GET", self._mailbox_path("/count"))
        count = data.get("count") if isinstance(data, dict) else None
        if not isinstance(count, int):
            raise MeshProtocolError("inbox count response has no integer 'count'")
        return count

    async def _rich(
        self,
        box: str,
        *,
        start_time: datetime | None,
        max_results: int,
        max_pages: int | None,
    ) -> list[RichMessage]:
        params: dict[str, str | int] = {"max_results": max_results}
        if start_time is not None:
            # UTC without an offset: the sandbox compares it with naive datetimes and answers
            # 500 to "...Z" or "+00:00" (its own documented example).
            params["start_time"] = start_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        path: str | None = self._mailbox_path(f"/{box}/rich")
        found: list[RichMessage] = []
        pages = 0
        while path is not None and (max_pages is None or pages < max_pages):
            data = await self._json("GET", path, params=params)
            pages += 1
            messages = data.get("messages") if isinstance(data, dict) else None
            if not isinstance(messages, list):
                raise MeshProtocolError(f"{box}/rich listing has no 'messages' list")
            found.extend(RichMessage.from_json(item) for item in messages)
            following = (data.get("links") or {}).get("next")
            if following and messages:
                path = self._next_path(str(following))
                params = {}
            else:
                path = None
        return found

    async def inbox_rich(
        self, *, start_time: datetime | None = None, max_results: int = 100
    ) -> list[RichMessage]:
        """Rich inbox listing (not in the public spec): newest first, with metadata."""
        return await self._rich(
            "inbox", start_time=start_time, max_results=max_results, max_pages=None
        )

    async def outbox_rich(
        self,
        *,
        start_time: datetime | None = None,
        max_results: int = 100,
        max_pages: int | None = None,
    ) -> list[RichMessage]:
        """What this mailbox sent, including messages still ``uploading`` (not in the public
        spec; the sandbox has it)."""
        return await self._rich(
            "outbox", start_time=start_time, max_results=max_results, max_pages=max_pages
        )

    async def head(self, message_id: str) -> MessageMetadata:
        """``HEAD /inbox/{id}``: the headers chunk 1 would carry."""
        path = self._mailbox_path(f"/inbox/{quote(message_id)}")
        _, headers, _ = await self.request("HEAD", path, message_id=message_id)
        return MessageMetadata.from_headers(message_id, headers)

    async def message_info(self, message_id: str) -> MessageMetadata | ReportMessage:
        """Metadata of a message, as a ReportMessage when MESH says it is a REPORT."""
        metadata = await self.head(message_id)
        return ReportMessage.from_metadata(metadata) if metadata.is_report else metadata

    @asynccontextmanager
    async def open_download(
        self, message_id: str, number: int = 1, *, accept_encoding: str = "identity"
    ) -> AsyncIterator[tuple[MessageMetadata, aiohttp.ClientResponse]]:
        """Open ``GET /inbox/{id}[/{n}]`` and yield (metadata, response) to stream the body.

        ``accept_encoding="identity"`` gets raw bytes (MESH decompresses a gzip-stored message);
        ``"gzip"`` gets a gzip-stored message as stored (and makes a server compress an
        uncompressed one on the fly). No retry here: see meshpipe.transfer.
        """
        suffix = f"/inbox/{quote(message_id)}" + (f"/{number}" if number > 1 else "")
        path = self._mailbox_path(suffix)
        opened = False
        attempt = _Attempt()
        try:
            async with self.session.get(
                self._url(path),
                headers=self._headers({"Accept-Encoding": accept_encoding}),
                trace_request_ctx=attempt,
            ) as response:
                if response.status not in (200, 206):
                    raise await self._raise_for(response, "GET", path, message_id)
                opened = True
                yield MessageMetadata.from_headers(message_id, response.headers), response
        except _CONNECTION_ERRORS as error:
            if opened:
                raise  # raised by the caller's body: it is the caller's to translate
            raise self._failure(f"GET {path}", attempt).translate(error) from error

    async def download_chunk(
        self,
        message_id: str,
        number: int,
        sink: Callable[[bytes], Awaitable[None]],
        *,
        accept_encoding: str = "identity",
        expect_encoding: str | None = None,
        piece_size: int = WRITE_PIECE_SIZE,
    ) -> DownloadedChunk:
        """Stream chunk ``number`` into ``sink`` in pieces of up to ``piece_size`` bytes.

        ``expect_encoding`` (``"gzip"`` or ``"identity"``): MeshProtocolError, before any byte
        reaches the sink, if the response's Content-Encoding is another."""
        received = 0
        failure = self._failure(
            f"GET chunk {number} of message {message_id}",
            time_limit=self.settings.transfer_timeout,
        )
        try:
            async with asyncio.timeout(self.settings.transfer_timeout):
                async with self.open_download(
                    message_id, number, accept_encoding=accept_encoding
                ) as (metadata, response):
                    encoding = (metadata.content_encoding or "identity").lower()
                    if expect_encoding is not None and encoding != expect_encoding:
                        raise MeshProtocolError(
                            f"chunk {number} of {message_id} came with Content-Encoding "
                            f"{encoding}, not {expect_encoding} like the message's other chunks"
                        )
                    async for piece in response.content.iter_chunked(piece_size):
                        received += len(piece)
                        try:
                            await sink(piece)
                        except Exception as error:
                            # e.g. a full disk: not a network failure, never retried as one
                            raise _SinkError() from error
                    status = response.status
        except _SinkError as wrapped:
            cause = wrapped.__cause__
            assert cause is not None
            raise cause from cause.__cause__
        except MeshConnectionError:
            raise  # already said what failed (opening the download)
        except _CONNECTION_ERRORS as error:
            raise failure.translate(error) from error
        if metadata.content_length is not None and received != metadata.content_length:
            raise MeshConnectionError(
                f"chunk {number} of {message_id}: got {received} of "
                f"{metadata.content_length} bytes; retry the download"
            )
        return DownloadedChunk(metadata=metadata, status=status, bytes_received=received)

    async def acknowledge(self, message_id: str) -> None:
        """``PUT /inbox/{id}/status/acknowledged``: removes it from the inbox (idempotent)."""
        await self._json(
            "PUT",
            self._mailbox_path(f"/inbox/{quote(message_id)}/status/acknowledged"),
            message_id=message_id,
        )

    async def track(self, message_id: str) -> TrackingInfo:
        """Status of a message this mailbox sent."""
        data = await self._json(
            "GET",
            self._mailbox_path("/outbox/tracking"),
            params={"messageID": message_id},
            message_id=message_id,
        )
        if not isinstance(data, dict):
            raise MeshProtocolError("tracking response is not a JSON object")
        return TrackingInfo.from_json(data)

    async def track_local_id(self, local_id: str) -> TrackingInfo:
        """Status of a sent message by its mex-LocalID (deprecated v1 endpoint). A status 300
        (MeshHTTPError) means more than one message has that local id."""
        data = await self._json(
            "GET",
            self._mailbox_path(f"/outbox/tracking/{quote(local_id, safe='')}"),
            headers={"Accept": "application/json"},
        )
        if not isinstance(data, dict):
            raise MeshProtocolError("tracking response is not a JSON object")
        return TrackingInfo.from_json(data)

    async def lookup(self, ods_code: str, workflow_id: str) -> list[Endpoint]:
        """Mailboxes of organisation ``ods_code`` registered for ``workflow_id`` (no auth)."""
        data = await self._json(
            "GET",
            f"{PREFIX}/endpointlookup/{quote(ods_code, safe='')}/{quote(workflow_id, safe='')}",
            auth=False,
        )
        results = data.get("results") if isinstance(data, dict) else None
        return [Endpoint.from_json(item) for item in results or []]

    async def workflow_search(self, workflow_id: str) -> list[Endpoint]:
        """Mailboxes registered for ``workflow_id`` (no auth)."""
        data = await self._json(
            "GET", f"{PREFIX}/workflowsearch/{quote(workflow_id, safe='')}", auth=False
        )
        results = data.get("results") if isinstance(data, dict) else None
        return [Endpoint.from_json(item) for item in results or []]
