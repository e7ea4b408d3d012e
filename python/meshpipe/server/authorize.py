"""Checks NHSMESH Authorization headers with meshpipe.auth, and refuses what fails.

Both rule sets check what mesh-sandbox checks: five parts, a numeric count, the token's mailbox
equal to the path's, a known mailbox, the HMAC (hex compared case-insensitively). The rule set
(:class:`~meshpipe.server.rules.RuleSet`) says what else: the ``NHSMESH`` scheme, the
timestamp within a window of server time, each token usable once (a repeated (mailbox, nonce,
count) is refused).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from meshpipe.auth import SCHEME, AuthHeaderError, parse_token, token_is_valid
from meshpipe.server.config import AuthMode, Directory, Mailbox
from meshpipe.server.models import Clock
from meshpipe.server.refusals import Refusal
from meshpipe.server.rules import TOKEN_WINDOW_SECONDS, RuleSet

MAX_REMEMBERED_TOKENS = 1_000_000


def _refused(key: str) -> Refusal:
    return Refusal(403, key)


class Authenticator:
    def __init__(
        self,
        rules: RuleSet,
        directory: Directory,
        clock: Clock,
        *,
        shared_key: str,
        mode: AuthMode = "full",
    ) -> None:
        self._rules = rules
        self._directory = directory
        self._clock = clock
        self._shared_key = shared_key
        self._mode = mode
        self._seen: dict[tuple[str, str, str], datetime] = {}

    def __repr__(self) -> str:
        return f"Authenticator(rules={self._rules.name!r}, mode={self._mode!r})"

    def check(self, path_mailbox: str, header: str | None) -> Mailbox:
        """The mailbox the request may act as; Refusal (403) when the token does not allow it."""
        mailbox_id = path_mailbox.upper()
        if self._mode == "none":
            return self._known(mailbox_id)
        header = (header or "").strip()
        if not header:
            raise _refused("token_unreadable")
        if not header.upper().startswith(SCHEME) and not self._rules.token_scheme_required:
            header = f"{SCHEME} {header}"
        try:
            token = parse_token(header)
        except AuthHeaderError:
            raise _refused("token_unreadable") from None
        if token.mailbox_id != mailbox_id:
            raise _refused("token_mailbox_mismatch")
        if self._mode == "canned":
            if token.nonce.upper() != "VALID":
                raise _refused("token_invalid")
            return self._known(mailbox_id)
        mailbox = self._known(mailbox_id)
        if not token_is_valid(token, mailbox.password, self._shared_key):
            raise _refused("token_invalid")
        now = self._clock.now()
        window = self._rules.token_window_seconds
        if window is not None:
            try:
                issued = token.issued_at()
            except AuthHeaderError:
                raise _refused("token_invalid") from None
            if abs(now - issued) > timedelta(seconds=window):
                raise _refused("token_invalid")
        if self._rules.single_use_tokens:
            key = (token.mailbox_id, token.nonce, token.nonce_count)
            if key in self._seen:
                raise _refused("token_replayed")
            # A token outside the window is refused anyway, so it need not be remembered longer.
            remembered = window if window is not None else TOKEN_WINDOW_SECONDS
            self._remember(key, now + timedelta(seconds=2 * remembered))
        return mailbox

    def _known(self, mailbox_id: str) -> Mailbox:
        mailbox = self._directory.get(mailbox_id)
        if mailbox is None:
            raise _refused("no_mailbox")
        return mailbox

    def _remember(self, key: tuple[str, str, str], forget_after: datetime) -> None:
        if len(self._seen) >= MAX_REMEMBERED_TOKENS:
            now = self._clock.now()
            self._seen = {k: v for k, v in self._seen.items() if v > now}
        self._seen[key] = forget_after
