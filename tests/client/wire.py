"""A raw HTTP/1.1 server on plain sockets, in a thread of its own, that records when the bytes
of each request body reach it, across all its connections: the wire-level view of an upload's
order (tests/client/test_upload_order.py).

It answers what an upload needs (chunk 1 with a message id, every other chunk with 202) and
keeps nothing but the bodies. Bytes are recorded in *passes*: each pass takes every byte the
kernel holds on every connection, then records them by request, in the order the requests
began (their headers arrived). So
of two bodies, one's bytes are recorded after the other's only if they had not all reached
this machine when the other's were taken: the order in which bodies arrived, as far as a
server can see it. Nothing is timed.
"""

from __future__ import annotations

import itertools
import json
import selectors
import socket
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

MESSAGE_ID = "20261203000000000000_ORDER1"
RECEIVE_BUFFER = 128 * 1024


@dataclass
class WireRequest:
    """One request as the server saw it: its chunk, its try, its body."""

    index: int
    connection: int
    chunk: int
    length: int
    body: bytearray = field(default_factory=bytearray)
    answered: int | None = None  # the event index of its answer
    status: int = 0
    abandoned: bool = False

    @property
    def complete(self) -> bool:
        return len(self.body) == self.length


@dataclass(frozen=True)
class Event:
    """``body`` (bytes [start, end) of a request's body), ``answer`` or ``abandoned``."""

    kind: str
    request: int
    chunk: int
    start: int = 0
    end: int = 0


@dataclass
class _Connection:
    number: int
    sock: socket.socket
    inbox: bytearray = field(default_factory=bytearray)
    request: WireRequest | None = None
    held: bool = False
    closed: bool = False


@dataclass
class WireServer:
    """``fail_once``: chunks whose first complete try is answered 500. ``answer_after_next``:
    chunks whose answer waits until a body of the next chunk has begun to arrive (so that a
    client that waits for each answer before the next request never finishes: only a pipelined
    one does). ``hold_first``: the first body of a chunk after chunk 1 to begin arriving is not
    read further until bytes of another chunk's body have arrived (which a client that sends
    chunks side by side does while the held body is still on its way)."""

    fail_once: set[int] = field(default_factory=set)
    answer_after_next: set[int] = field(default_factory=set)
    hold_first: bool = False
    requests: list[WireRequest] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    max_outstanding: int = 0

    def __post_init__(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.setblocking(False)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._connections: list[_Connection] = []
        self._waiting: list[WireRequest] = []  # complete, answer held back
        self._failed: set[int] = set()
        self._held: WireRequest | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="wire-server", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        for connection in self._connections:
            connection.sock.close()
        self._listener.close()
        self._selector.close()
        if self.error is not None and exc is None:
            raise self.error

    # --- the loop --------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                for key, _ in self._selector.select(0.05):
                    if key.data is None:
                        self._accept()
                self._pass()
        except BaseException as error:  # reported by __exit__
            self.error = error

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            connection = _Connection(len(self._connections), sock)
            self._connections.append(connection)
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _pass(self) -> None:
        """Take every byte the kernel holds, then record them by request, the one that began
        first first."""
        ended: list[_Connection] = []
        for connection in self._connections:
            if connection.closed or connection.held:
                continue
            if self._take(connection):
                ended.append(connection)
        progress = True
        while progress:
            progress = False
            for connection in self._connections:
                if not connection.closed and not connection.held:
                    progress |= self._headers(connection)
            for connection in sorted(self._readable(), key=_began):
                progress |= self._body(connection)
            progress |= self._answer_waiting()
        for connection in ended:
            self._close(connection)
        self._release_held()

    def _readable(self) -> list[_Connection]:
        return [c for c in self._connections if not c.closed and not c.held and c.request]

    def _take(self, connection: _Connection) -> bool:
        """One read of what the kernel holds (at most its receive buffer: a snapshot, not
        what keeps arriving while reading); True at the end of the stream."""
        try:
            data = connection.sock.recv(1 << 20)
        except BlockingIOError:
            return False
        except ConnectionError:
            return True
        if not data:
            return True
        connection.inbox += data
        return False

    def _headers(self, connection: _Connection) -> bool:
        if connection.request is not None or b"\r\n\r\n" not in connection.inbox:
            return False
        head, _, rest = bytes(connection.inbox).partition(b"\r\n\r\n")
        connection.inbox = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
        tail = path.rstrip("/").rsplit("/", 1)[1]
        chunk = int(tail) if tail.isdigit() else 1
        request = WireRequest(
            len(self.requests), connection.number, chunk, int(headers.get("content-length", 0))
        )
        self.requests.append(request)
        connection.request = request
        outstanding = sum(1 for r in self.requests if r.answered is None and not r.abandoned)
        self.max_outstanding = max(self.max_outstanding, outstanding)
        return True

    def _body(self, connection: _Connection) -> bool:
        request = connection.request
        assert request is not None
        if request in self._waiting:
            return False
        wanted = request.length - len(request.body)
        piece = bytes(connection.inbox[:wanted])
        if piece:
            del connection.inbox[: len(piece)]
            start = len(request.body)
            request.body += piece
            self.events.append(
                Event("body", request.index, request.chunk, start, len(request.body))
            )
            if self.hold_first and self._held is None and request.chunk > 1:
                self._held = request
                connection.held = True
                self._selector.unregister(connection.sock)
        if not request.complete:
            return bool(piece)
        self._waiting.append(request)
        return True

    def _answer_waiting(self) -> bool:
        answered = False
        for request in list(self._waiting):
            if request.chunk in self.answer_after_next and not self._next_begun(request):
                continue
            self._waiting.remove(request)
            self._answer(request)
            answered = True
        return answered

    def _next_begun(self, request: WireRequest) -> bool:
        return any(
            event.kind == "body" and event.chunk == request.chunk + 1
            for event in self.events[self._answer_index_floor(request) :]
        )

    def _answer_index_floor(self, request: WireRequest) -> int:
        """Events after this request's last body byte."""
        return max(i for i, e in enumerate(self.events) if e.request == request.index)

    def _answer(self, request: WireRequest) -> None:
        connection = self._connections[request.connection]
        if request.chunk in self.fail_once and request.chunk not in self._failed:
            self._failed.add(request.chunk)
            status, body = 500, {"errorCode": "500", "errorDescription": "try again"}
        else:
            status, body = 202, {"message_id": MESSAGE_ID}
        payload = json.dumps(body).encode()
        reason = "Accepted" if status == 202 else "Internal Server Error"
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        connection.sock.setblocking(True)
        connection.sock.sendall(head.encode() + payload)
        connection.sock.setblocking(False)
        request.status = status
        request.answered = len(self.events)
        self.events.append(Event("answer", request.index, request.chunk))
        connection.request = None

    def _close(self, connection: _Connection) -> None:
        request = connection.request
        if request is not None and not request.complete:
            request.abandoned = True
            self.events.append(Event("abandoned", request.index, request.chunk))
        connection.closed = True
        if not connection.held:
            self._selector.unregister(connection.sock)
        connection.sock.close()

    def _release_held(self) -> None:
        held = self._held
        if held is None or not any(
            e.kind == "body" and e.chunk > 1 and e.request != held.index for e in self.events
        ):
            return
        for connection in self._connections:
            if connection.held:
                connection.held = False
                self._selector.register(connection.sock, selectors.EVENT_READ, connection)
        self.hold_first = False

    # --- what the tests ask ------------------------------------------------------------------

    def tries(self, chunk: int) -> list[WireRequest]:
        return [r for r in self.requests if r.chunk == chunk]

    def timeline(self) -> str:
        """The events, runs of one kind on one request folded (for a failure's message)."""
        runs: list[tuple[str, int, int, int]] = []
        for event in self.events:
            if runs and runs[-1][:3] == (event.kind, event.request, event.chunk):
                runs[-1] = (*runs[-1][:3], event.end)
            else:
                runs.append((event.kind, event.request, event.chunk, event.end))
        return "; ".join(
            f"{kind} r{request} c{chunk} ..{end}" for kind, request, chunk, end in runs
        )


def _began(connection: _Connection) -> int:
    assert connection.request is not None
    return connection.request.index


def overlaps(server: WireServer) -> list[str]:
    """Each pair of request bodies whose bytes arrived interleaved (a byte of the later one
    before the last byte of the earlier one), described."""
    spans: dict[int, tuple[int, int]] = {}
    for index, event in enumerate(server.events):
        if event.kind == "body":
            first, _ = spans.get(event.request, (index, index))
            spans[event.request] = (first, index)
    found = []
    ordered = sorted(spans.items(), key=lambda item: item[1][0])
    for (one, (_, one_end)), (two, (two_start, _)) in itertools.pairwise(ordered):
        if two_start < one_end:
            a, b = server.requests[one], server.requests[two]
            found.append(f"chunk {b.chunk} (request {two}) began before chunk {a.chunk} ended")
    return found


def completed_before_accepted(server: WireServer) -> list[str]:
    """Each chunk whose body was complete before the chunk before it was accepted."""
    accepted_at: dict[int, int] = {}
    for request in server.requests:
        if request.status == 202 and request.answered is not None:
            accepted_at.setdefault(request.chunk, request.answered)
    found = []
    for request in server.requests:
        if not request.complete or request.chunk - 1 not in accepted_at:
            continue
        last_byte = max(
            i
            for i, e in enumerate(server.events)
            if e.kind == "body" and e.request == request.index
        )
        if last_byte < accepted_at[request.chunk - 1]:
            found.append(f"chunk {request.chunk} complete before chunk {request.chunk - 1}")
    return found
