"""NHSMESH authorization tokens: made by the client, checked by the local server.

``Authorization: NHSMESH <MAILBOX>:<nonce>:<nonce_count>:<timestamp>:<hmac>`` where the HMAC
is SHA-256, keyed by the environment's shared key, over
``MAILBOX:nonce:nonce_count:PASSWORD:timestamp`` and written as lowercase hex. The timestamp is
UTC ``yyyyMMddHHmm``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

SCHEME = "NHSMESH"
TIMESTAMP_FORMAT = "%Y%m%d%H%M"


class AuthHeaderError(ValueError):
    """The Authorization header is missing or not a well-formed NHSMESH token."""


@dataclass(frozen=True, slots=True)
class AuthToken:
    """A parsed token. It holds no secret: the HMAC only proves knowledge of one."""

    mailbox_id: str
    nonce: str
    nonce_count: str
    timestamp: str
    digest: str

    def issued_at(self) -> datetime:
        """The token's timestamp as an aware UTC datetime; AuthHeaderError if malformed."""
        if len(self.timestamp) != 12 or not self.timestamp.isdigit():
            raise AuthHeaderError("token timestamp must be 12 digits, UTC yyyyMMddHHmm")
        try:
            return datetime.strptime(self.timestamp, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
        except ValueError as exc:
            raise AuthHeaderError(f"token timestamp is not a valid date: {exc}") from None


def _digest(
    mailbox_id: str, nonce: str, nonce_count: str, password: str, timestamp: str, shared_key: str
) -> str:
    message = f"{mailbox_id}:{nonce}:{nonce_count}:{password}:{timestamp}"
    return hmac.new(shared_key.encode(), message.encode(), hashlib.sha256).hexdigest()


def make_token(
    mailbox_id: str,
    password: str,
    shared_key: str,
    *,
    nonce: str | None = None,
    nonce_count: int = 0,
    now: datetime | None = None,
) -> str:
    """The full header value, ``NHSMESH ...``, for one request."""
    mailbox_id = mailbox_id.upper()
    nonce = nonce or str(uuid.uuid4())
    timestamp = (now or datetime.now(UTC)).astimezone(UTC).strftime(TIMESTAMP_FORMAT)
    count = str(nonce_count)
    digest = _digest(mailbox_id, nonce, count, password, timestamp, shared_key)
    return f"{SCHEME} {mailbox_id}:{nonce}:{count}:{timestamp}:{digest}"


def parse_token(header: str | None) -> AuthToken:
    """Split a header value into its parts; AuthHeaderError says what is wrong."""
    if not header:
        raise AuthHeaderError("missing Authorization header")
    scheme, _, rest = header.partition(" ")
    if scheme.upper() != SCHEME or not rest:
        raise AuthHeaderError(f"Authorization header must start with '{SCHEME} '")
    parts = rest.strip().split(":")
    if len(parts) != 5:
        raise AuthHeaderError("NHSMESH token must have 5 colon-separated parts")
    mailbox_id, nonce, nonce_count, timestamp, digest = parts
    if not nonce_count.isdigit():
        raise AuthHeaderError("NHSMESH nonce count must be decimal digits")
    return AuthToken(mailbox_id, nonce, nonce_count, timestamp, digest)


def token_is_valid(token: AuthToken, password: str, shared_key: str) -> bool:
    """True when the token's HMAC matches (hex compared case-insensitively, in constant time)."""
    expected = _digest(
        token.mailbox_id, token.nonce, token.nonce_count, password, token.timestamp, shared_key
    )
    return hmac.compare_digest(expected, token.digest.lower())


class TokenSource:
    """Makes a fresh token per request: one UUID nonce per source, an atomically rising count,
    so concurrent requests never share (nonce, count). Its repr shows no secret."""

    __slots__ = ("_counter", "_lock", "_mailbox_id", "_nonce", "_password", "_shared_key")

    def __init__(self, mailbox_id: str, password: str, shared_key: str) -> None:
        self._mailbox_id = mailbox_id.upper()
        self._password = password
        self._shared_key = shared_key
        self._nonce = str(uuid.uuid4())
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            count = next(self._counter)
        return make_token(
            self._mailbox_id, self._password, self._shared_key, nonce=self._nonce, nonce_count=count
        )

    def __repr__(self) -> str:
        return f"TokenSource(mailbox_id={self._mailbox_id!r}, password=<redacted>)"
