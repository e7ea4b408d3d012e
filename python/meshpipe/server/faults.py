"""Fault injection from a plan: deterministic (counters and a seed, never the clock).

A plan is a list of rules, from Python or a JSON file::

    {"seed": 7, "faults": [
      {"kind": "status", "route": "send_chunk", "nth": 2, "status": 503, "retry_after": 1},
      {"kind": "reset", "route": "send_chunk", "chunk": 3, "after_bytes": 1048576},
      {"kind": "stall", "route": "download", "nth": 1, "seconds": 5},
      {"kind": "flip", "route": "download", "chunk": 2},
      {"kind": "lost_ack", "nth": 1, "applied": false}
    ]}

Every rule counts the requests that match its ``route`` (and ``chunk`` and ``mailbox`` when
given); it fires on match number ``nth`` (1-based) and the ``times - 1`` matches after it
(``times: 0`` means every match from ``nth`` on). Kinds:

* ``status``: answer ``status`` (500, 503, 429, ...) with a MESH-style body, and
  ``Retry-After: retry_after`` when set, before the request is processed (nothing is stored).
* ``reset``: abort the connection after ``after_bytes`` bytes of the request body (uploads) or
  of the response body (downloads).
* ``stall``: wait ``seconds`` before handling the request (or, with ``after_bytes``, after that
  many body bytes of an upload or a download).
* ``flip``: on a download, invert one byte of the body as sent: at ``offset`` if given, else at
  a position drawn from the plan's seed.
* ``lost_ack``: on an acknowledgement, drop the connection without answering; with
  ``applied: true`` the acknowledgement is recorded first (the reply is what is lost).

Routes: ping, handshake, send (chunk 1), send_chunk (n ≥ 2), inbox, count, head, download
(any chunk), ack, tracking, lookup, rich, admin, any. Every fault that fires is logged (logger
``meshpipe.server.faults``) and appended to ``FaultInjector.log``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

log = logging.getLogger("meshpipe.server.faults")

FaultKind = Literal["status", "reset", "stall", "flip", "lost_ack"]
KINDS: tuple[str, ...] = ("status", "reset", "stall", "flip", "lost_ack")
ROUTES: tuple[str, ...] = (
    "ping",
    "handshake",
    "send",
    "send_chunk",
    "inbox",
    "count",
    "head",
    "download",
    "ack",
    "tracking",
    "lookup",
    "rich",
    "admin",
    "any",
)


class FaultPlanError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    route: str = "any"
    nth: int = 1
    times: int = 1
    chunk: int | None = None
    mailbox: str | None = None
    status: int = 500
    retry_after: int | None = None
    after_bytes: int = 0
    seconds: float = 0.0
    offset: int | None = None
    applied: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FaultPlanError(f"fault kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.route not in ROUTES:
            raise FaultPlanError(f"fault route must be one of {', '.join(ROUTES)}")
        if self.nth < 1 or self.times < 0:
            raise FaultPlanError("nth must be ≥ 1 and times ≥ 0")
        if self.kind == "lost_ack" and self.route not in ("ack", "any"):
            raise FaultPlanError("lost_ack applies to the ack route only")
        if self.kind == "flip" and self.route not in ("download", "any"):
            raise FaultPlanError("flip applies to the download route only")
        if not 100 <= self.status <= 599:
            raise FaultPlanError(f"status must be an HTTP status, not {self.status}")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        allowed = set(cls.__dataclass_fields__)
        unknown = set(data) - allowed
        if unknown:
            raise FaultPlanError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass(frozen=True)
class FaultPlan:
    faults: tuple[Fault, ...] = ()
    seed: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultPlan:
        items = data.get("faults", [])
        if not isinstance(items, list):
            raise FaultPlanError("'faults' must be a list")
        return cls(tuple(Fault.from_json(item) for item in items), int(data.get("seed", 0)))

    @classmethod
    def load(cls, path: Path) -> FaultPlan:
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except OSError as exc:
            raise FaultPlanError(f"cannot read fault plan {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise FaultPlanError(f"fault plan {path} is not JSON: {exc.msg}") from None

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "faults": [asdict(f) for f in self.faults]}


@dataclass(slots=True)
class Firing:
    """One fault that fired, for the request that matched it."""

    fault: Fault
    index: int
    flip_position: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


class FaultInjector:
    def __init__(self, plan: FaultPlan | None = None) -> None:
        self._lock = threading.Lock()
        self.log: list[dict[str, Any]] = []
        self.set_plan(plan or FaultPlan())

    def set_plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self.plan = plan
            self._counts = [0] * len(plan.faults)
            self._random = random.Random(plan.seed)

    def add(self, fault: Fault) -> None:
        self.set_plan(FaultPlan((*self.plan.faults, fault), self.plan.seed))

    def clear(self) -> None:
        self.set_plan(FaultPlan((), self.plan.seed))

    def match(
        self, route: str, *, chunk: int | None = None, mailbox: str | None = None
    ) -> list[Firing]:
        """Count this request against every rule and return the rules that fire for it."""
        fired: list[Firing] = []
        with self._lock:
            for index, fault in enumerate(self.plan.faults):
                if fault.route not in (route, "any"):
                    continue
                if fault.chunk is not None and fault.chunk != chunk:
                    continue
                if fault.mailbox is not None and fault.mailbox.upper() != (mailbox or ""):
                    continue
                self._counts[index] += 1
                count = self._counts[index]
                if count < fault.nth or (fault.times and count >= fault.nth + fault.times):
                    continue
                flip = None
                if fault.kind == "flip":
                    flip = (
                        fault.offset if fault.offset is not None else self._random.getrandbits(62)
                    )
                fired.append(Firing(fault, index, flip))
        return fired

    def record(self, firing: Firing, route: str, **details: Any) -> None:
        entry = {"fault": firing.fault.kind, "rule": firing.index, "route": route, **details}
        with self._lock:
            self.log.append(entry)
        log.warning("injected fault %s", json.dumps(entry, sort_keys=True))


#: The faults that fired for a request (set by the middleware, read by the streaming code).
FIRINGS = web.RequestKey("meshpipe_faults", list[Firing])


def firings(request: web.Request, kind: str) -> list[Firing]:
    return [f for f in request.get(FIRINGS, []) if f.fault.kind == kind]


class FaultyStream:
    """The body faults that fired for one request (flip, stall after N bytes, reset after N
    bytes), applied to its body piece by piece, whichever way the body goes: ``direction`` is
    ``upload`` or ``download``, as the fault log says. ``length`` (downloads) places a flip
    drawn from the seed inside the body."""

    def __init__(
        self,
        injector: FaultInjector,
        request: web.Request,
        direction: Literal["upload", "download"],
        *,
        message_id: str,
        chunk: int,
        length: int | None = None,
    ) -> None:
        self._injector = injector
        self._direction = direction
        self._where: dict[str, Any] = {"message_id": message_id, "chunk": chunk}
        self._stalls = [f for f in firings(request, "stall") if f.fault.after_bytes]
        self._resets = firings(request, "reset")
        self._reset_at = min((f.fault.after_bytes for f in self._resets), default=None)
        self._flips: dict[int, Firing] = {}
        for firing in firings(request, "flip"):
            assert firing.flip_position is not None
            self._flips[firing.flip_position % (length or 1)] = firing
        self.passed = 0  # body bytes let through so far

    @property
    def active(self) -> bool:
        return bool(self._stalls or self._resets or self._flips)

    async def admit(self, piece: bytes) -> tuple[bytes, bool]:
        """The piece as it goes on (a byte flipped, or cut short), and whether the connection
        is to be cut after it."""
        start = self.passed
        end = start + len(piece)
        for position in [p for p in self._flips if start <= p < end]:
            mutable = bytearray(piece)
            mutable[position - start] ^= 0xFF
            piece = bytes(mutable)
            self._record(self._flips.pop(position), offset=position)
        for stall in [f for f in self._stalls if end >= f.fault.after_bytes]:
            self._stalls.remove(stall)
            self._record(stall, seconds=stall.fault.seconds, after_bytes=stall.fault.after_bytes)
            await asyncio.sleep(stall.fault.seconds)
        if self._reset_at is not None and end >= self._reset_at:
            piece = piece[: self._reset_at - start]
            self.passed += len(piece)
            self._record(self._resets[0], after_bytes=self._reset_at)
            return piece, True
        self.passed = end
        return piece, False

    def _record(self, firing: Firing, **details: Any) -> None:
        self._injector.record(firing, self._direction, **self._where, **details)


def cut_connection(request: web.Request) -> web.Response:
    """Abort the request's connection (a fault, or a lost reply); the 499 is never sent."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=499)
