"""Checks NHSMESH Authorization headers with meshpipe.auth, and refuses what fails.

Both rule sets check what mesh-sandbox checks: five parts, a numeric count, the token's mailbox
equal to the path's, a known mailbox, the HMAC (hex compared case-insensitively). The rule set
(:class:`~meshpipe.server.rules.RuleSet`) says what else: the ``NHSMESH`` scheme, the
timestamp within a window of server time, each token usable once (a repeated (mailbox, nonce,
count) is refused).

The tokens already used are kept by :class:`UsedTokens`, each until its timestamp leaves the
window (after that the window refuses it anyway); with the dir store they are journalled in the
data directory, so a restarted server still refuses a token used before the restart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from datetime import datetime, timedelta
from pathlib import Path

from meshpipe.auth import SCHEME, AuthHeaderError, parse_token, token_is_valid
from meshpipe.server.config import AuthMode, Directory, Mailbox
from meshpipe.server.models import Clock
from meshpipe.server.refusals import Refusal
from meshpipe.server.rules import TOKEN_WINDOW_SECONDS, RuleSet
from meshpipe.server.store import write_atomically

log = logging.getLogger("meshpipe.server")

#: At most this many used tokens are remembered (about 150 MB); past it the ones closest to
#: leaving the window are forgotten first. A mailbox would have to make over 130 authenticated
#: requests a second for two hours to get there.
MAX_REMEMBERED_TOKENS = 1_000_000

TokenKey = tuple[str, str, str]


class UsedTokens:
    """The (mailbox, nonce, nonce count) of every token accepted, each with the moment after
    which it can no longer pass the time window. With a ``journal`` file each one is appended
    there as a JSON line ``[forget_after (epoch seconds), mailbox, nonce, count]`` (no password
    or HMAC), read back at start-up, and the file is rewritten without the expired ones when
    it has grown to twice what is remembered."""

    def __init__(
        self, clock: Clock, journal: Path | None = None, *, limit: int = MAX_REMEMBERED_TOKENS
    ) -> None:
        self._clock = clock
        self._journal = journal
        self._limit = limit
        self._seen: dict[TokenKey, float] = {}
        self._fd: int | None = None
        self._lines = 0
        if journal is not None:
            self._load(journal)
            self._compact()

    def __contains__(self, key: TokenKey) -> bool:
        forget_after = self._seen.get(key)
        return forget_after is not None and forget_after >= self._clock.now().timestamp()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, key: TokenKey, forget_after: datetime) -> None:
        if len(self._seen) >= self._limit:
            self._make_room()
        moment = forget_after.timestamp()
        self._seen[key] = moment
        if self._fd is not None:
            line = json.dumps([moment, *key], separators=(",", ":")) + "\n"
            os.write(self._fd, line.encode())
            self._lines += 1
            if self._lines > 2 * len(self._seen) + 1000:
                self._compact()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _load(self, journal: Path) -> None:
        now = self._clock.now().timestamp()
        with contextlib.suppress(FileNotFoundError), journal.open("rb") as lines:
            for line in lines:
                try:
                    moment, mailbox, nonce, count = json.loads(line)
                    key = (str(mailbox), str(nonce), str(count))
                    moment = float(moment)
                except (ValueError, TypeError):
                    continue  # a torn last line after a crash
                if moment >= now:
                    self._seen[key] = max(moment, self._seen.get(key, moment))

    def _compact(self) -> None:
        """Rewrite the journal with what is remembered now (expired tokens dropped)."""
        assert self._journal is not None
        self._forget_expired()
        self.close()
        text = "".join(
            json.dumps([moment, *key], separators=(",", ":")) + "\n"
            for key, moment in self._seen.items()
        )
        write_atomically(self._journal, text.encode())
        self._fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND)
        self._lines = len(self._seen)

    def _forget_expired(self) -> None:
        now = self._clock.now().timestamp()
        self._seen = {k: v for k, v in self._seen.items() if v >= now}

    def _make_room(self) -> None:
        self._forget_expired()
        if len(self._seen) < self._limit:
            return
        keep = sorted(self._seen.items(), key=lambda item: item[1])[len(self._seen) // 10 :]
        log.warning(
            "more than %d used tokens within their time window; forgetting the %d closest "
            "to expiry",
            self._limit,
            len(self._seen) - len(keep),
        )
        self._seen = dict(keep)


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
        used: UsedTokens | None = None,
    ) -> None:
        self._rules = rules
        self._directory = directory
        self._clock = clock
        self._shared_key = shared_key
        self._mode = mode
        self.used = used if used is not None else UsedTokens(clock)

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
        window = self._rules.token_window_seconds
        issued: datetime | None = None
        if window is not None:
            try:
                issued = token.issued_at()
            except AuthHeaderError:
                raise _refused("token_invalid") from None
            if abs(self._clock.now() - issued) > timedelta(seconds=window):
                raise _refused("token_invalid")
        if self._rules.single_use_tokens:
            key = (token.mailbox_id, token.nonce, token.nonce_count)
            if key in self.used:
                raise _refused("token_replayed")
            # Past its window the token is refused anyway, so it need not be remembered longer.
            if issued is not None and window is not None:
                forget_after = issued + timedelta(seconds=window)
            else:
                forget_after = self._clock.now() + timedelta(seconds=2 * TOKEN_WINDOW_SECONDS)
            self.used.add(key, forget_after)
        return mailbox

    def _known(self, mailbox_id: str) -> Mailbox:
        mailbox = self._directory.get(mailbox_id)
        if mailbox is None:
            raise _refused("no_mailbox")
        return mailbox
