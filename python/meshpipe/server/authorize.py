"""Checks NHSMESH Authorization headers with meshpipe.auth.

Both rule sets check what mesh-sandbox checks: five parts, a numeric count, the token's mailbox
equal to the path's, a known mailbox, the HMAC (hex compared case-insensitively). ``strict``
rules add what live does: the timestamp within ±2 hours of server time, and each token usable
once (a repeated (mailbox, nonce, count) is refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from meshpipe.auth import SCHEME, AuthHeaderError, parse_token, token_is_valid
from meshpipe.server.config import Directory, Mailbox, ServerConfig
from meshpipe.server.models import Clock

MAX_REMEMBERED_TOKENS = 1_000_000


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Why a request was refused: ``reason`` is a key of responses.AUTH_ERRORS."""

    reason: str


class Authenticator:
    def __init__(self, config: ServerConfig, directory: Directory, clock: Clock) -> None:
        self._config = config
        self._directory = directory
        self._clock = clock
        self._seen: dict[tuple[str, str, str], datetime] = {}

    def check(self, path_mailbox: str, header: str | None) -> Mailbox | AuthFailure:
        mailbox_id = path_mailbox.upper()
        mode = self._config.auth_mode
        if mode == "none":
            return self._known(mailbox_id)
        header = (header or "").strip()
        if not header:
            return AuthFailure("read")
        if not header.upper().startswith(SCHEME) and not self._config.strict:
            header = f"{SCHEME} {header}"  # the sandbox also accepts a token without the scheme
        try:
            token = parse_token(header)
        except AuthHeaderError:
            return AuthFailure("read")
        if token.mailbox_id != mailbox_id:
            return AuthFailure("mismatch")
        if mode == "canned":
            if token.nonce.upper() != "VALID":
                return AuthFailure("invalid")
            return self._known(mailbox_id)
        mailbox = self._directory.get(mailbox_id)
        if mailbox is None:
            return AuthFailure("no_mailbox")
        if not token_is_valid(token, mailbox.password, self._config.shared_key):
            return AuthFailure("invalid")
        if self._config.strict:
            now = self._clock.now()
            try:
                issued = token.issued_at()
            except AuthHeaderError:
                return AuthFailure("invalid")
            window = timedelta(seconds=self._config.token_window_seconds)
            if abs(now - issued) > window:
                return AuthFailure("invalid")
            key = (token.mailbox_id, token.nonce, token.nonce_count)
            if key in self._seen:
                return AuthFailure("replayed")
            self._remember(key, now + 2 * window)
        return mailbox

    def _known(self, mailbox_id: str) -> Mailbox | AuthFailure:
        mailbox = self._directory.get(mailbox_id)
        return mailbox if mailbox is not None else AuthFailure("no_mailbox")

    def _remember(self, key: tuple[str, str, str], forget_after: datetime) -> None:
        if len(self._seen) >= MAX_REMEMBERED_TOKENS:
            now = self._clock.now()
            self._seen = {k: v for k, v in self._seen.items() if v > now}
        self._seen[key] = forget_after
