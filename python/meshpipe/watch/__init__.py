"""``meshpipe watch``: file-drop automation on the durable layer, and the operations signals.

One long-running process serves one or more mailboxes. For each, an outbox folder is watched
(a data file with its DTSControl ``.ctl``, or a file in a folder with a rule) and every
complete file is sent through the ledger; the inbox is polled and every verified message is
written atomically into an inbox folder with its metadata. Metrics, health and readiness are
served on one HTTP port bound to localhost.

Modules, each one job: ``settings`` (the TOML ``[watch]`` table), ``metrics`` (Prometheus
declarations), ``control`` (DTSControl files), ``folders`` (safe file operations), ``outbox``
and ``inbox`` (one mailbox's sends and receives), ``service`` (the loops, back-off, shutdown),
``health`` (what readiness is judged on), ``ops`` (the HTTP endpoint), ``certificates``
(client certificate expiry), ``cli``.
"""
