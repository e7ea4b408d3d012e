"""The transfer ledger: a durable record of every send and receive, so that a transfer killed
part-way resumes where it was, a send is not made twice, and a message is delivered once.

Where it lives
--------------
One schema and one query layer (SQLAlchemy Core) serve two databases, chosen by location:

* a plain path or ``sqlite:///PATH``: an embedded SQLite file, by default
  ``ledger.sqlite3`` in the state directory (``--state-dir``, else ``$MESHPIPE_STATE_DIR``,
  else ``$XDG_DATA_HOME/meshpipe``, else ``~/.local/share/meshpipe``);
* ``postgresql://USER@HOST/DATABASE`` (through psycopg 3, ``pip install meshpipe[postgres]``):
  one ledger shared by many machines.

:func:`resolve_ledger_location` applies that order (``--ledger``, then ``--state-dir``, then
``$MESHPIPE_LEDGER``, then ``$MESHPIPE_STATE_DIR``, then the default); :func:`resolve_state_dir`
gives the directory alone (for partial files). Errors and ``Ledger.location`` never show a
PostgreSQL password.

Schema (version 2)
------------------
Table names start with ``meshpipe_`` so that a PostgreSQL database can be shared with other
programs (such as a job queue).

``meshpipe_transfers``, one row per send or receive (``direction``):
  ``id``; ``mailbox`` (ours: the sender of a send, the recipient of a receive); ``state``;
  ``local_id``; ``sequence`` (sends: 1 for the first send of a local id from a mailbox, 2 for
  the next deliberate repeat...); ``message_id``; ``counterparty`` (recipient of a send, sender
  of a receive); ``workflow_id``; ``subject``; ``headers`` (JSON: a send's request headers,
  every ``mex-`` header of a receive); ``path`` (the source of a send, the destination of a
  receive); ``partial_path`` (receives); ``size``; ``mtime_ns``, ``inode``, ``device``
  (sends: the source's identity); ``xxh3_128`` (the whole file's); ``chunk_size``,
  ``chunk_count``, ``codec``, ``level``; ``chunks_done`` (chunks accepted or written, kept in
  the same transaction as the chunk, so history needs no aggregate); ``error``; ``hook_ok``,
  ``hook_detail``, ``hook_attempts`` (receives); the claim: ``owner`` (``pid@host``),
  ``owner_pid``, ``owner_host``, ``owner_token``, ``lease_expires_at``; ``created_at``,
  ``updated_at``, ``finished_at``. Unique: (mailbox, local_id, sequence) among sends,
  (mailbox, message_id) among receives. Indexed for history: message id, local id, and
  (state | mailbox | workflow | direction, id), creation time.

``meshpipe_chunks``, primary key (transfer_id, number):
  ``state`` (``sent``/``accepted`` for sends, ``written`` for receives); ``xxh3_128`` of the
  uncompressed bytes; ``payload_size`` (sends: bytes on the wire); ``length`` (receives:
  uncompressed bytes); ``sent_at``; ``done_at`` (accepted or written); ``worker`` (version
  2: the fleet worker, ``name`` or ``pid@host``, that last sent it; None outside the fleet).

``meshpipe_mailbox_pace`` (version 2), primary key ``mailbox``: ``next_at``, the earliest
start of the mailbox's next request across a fleet of workers (meshpipe.fleet's rate limit).

``meshpipe_events``, append-only, ordered by ``id``, indexed on (transfer_id, id):
  ``transfer_id``, ``at``, ``kind`` (:data:`EventKind`), ``detail`` (JSON). Every state
  change below appends one; the pipeline adds retries, errors and notes with
  :meth:`Ledger.record_event`.

``meshpipe_schema_migrations``: one row per migration applied (version, description, time).

No patient details are recorded: ``mex-To`` and ``mex-Subject`` in ``headers``, the
``counterparty`` and ``subject`` columns, errors and event details are kept masked
(:func:`meshpipe.gp_route.mask_patient_details`), so a GP-routing recipient is
``GPPROVIDER_******1234`` and an NHS number in a subject ``******1234``.

Times are UTC (``timestamptz`` on PostgreSQL, fixed-format UTC text on SQLite); records hand
them back timezone-aware.

State machines
--------------
Send::

    begin_send -> preparing --set_message_id (chunk 1 accepted)--> uploading
    uploading --finish_send("completed"): every chunk accepted--> completed
    preparing | uploading --mark_failed / finish_send("failed")--> failed
    failed --resume--> uploading (message id known) | preparing
    preparing | uploading | failed --restart_send (MESH lost the message)--> preparing
    chunk: chunk_sent -> sent --chunk_accepted--> accepted

Receive::

    begin_receive -> downloading --mark_verified (every chunk written)--> verified
    verified --mark_delivered--> delivered --mark_acknowledged--> acknowledged
    downloading | verified --mark_failed--> failed --resume--> downloading
    delivered: record_hook (any number of runs); acknowledged: mark_acknowledged again
    records a redelivery's acknowledgement
    chunk: chunk_written -> written (written, fsynced, verified); discard_chunks forgets
    chunks that fail their re-check when the partial file is reopened

A change the machine does not allow raises :class:`LedgerError` with ``code``
``invalid-state`` (or ``incomplete``, ``checksum-mismatch``, ``chunk-not-sent``,
``chunk-number``, ``wrong-direction``...) and changes nothing.

What is committed when
----------------------
Every method that changes something runs one transaction and commits it before it returns:
the caller acts only after the ledger holds the fact (:meth:`Ledger.batch` groups several
changes into one transaction). Record ``chunk_sent`` before a chunk goes on the wire where
that must survive a crash (chunk 1: a resume then asks MESH for the message), or together with
its ``chunk_accepted`` in one batch, ``chunk_accepted``/``set_message_id`` only after MESH
answered,
``chunk_written`` only after the chunk's bytes are fsynced and verified, ``mark_delivered``
only after fsync and rename, ``mark_acknowledged`` only after MESH confirmed. SQLite runs in
WAL mode with ``synchronous=FULL`` (a committed change survives power loss) and foreign keys
on; PostgreSQL relies on its own WAL (keep ``synchronous_commit`` on).

Opening
-------
:meth:`Ledger.open` creates a missing or empty ledger and applies the forward migrations in
order, each in its own transaction with its row in ``meshpipe_schema_migrations``. It
refuses, changing nothing, a ledger of a newer schema (``newer-schema``: upgrade meshpipe),
a file that is not SQLite (``not-a-database``), shorter than its header says or empty beside
a write-ahead log (``truncated``), malformed (``corrupt``), or another program's database
(``not-a-ledger``); each message names the file and what to do. A ledger is never
recreated over existing records.

Locking: one writer per transfer
--------------------------------
``with ledger.claim(transfer):`` holds a transfer for this process: in one transaction it
writes ``owner`` (``pid@host``), a random token and a lease (30 s by default), which a
background thread renews every third of the lease, and which every change renews too. Every
change begins with a guarded stamp of the transfer's row that succeeds only if the transfer
is unclaimed or claimed with this process's token, so a process that does not hold the claim
cannot change the transfer. A second process is refused at once with
:class:`TransferBusyError` naming the owner and the lease's end, or with ``wait=SECONDS``
keeps trying that long. A claim is taken over (event ``taken_over``, naming the previous
owner and why) when its owner's pid no longer runs on this host (SIGKILL, a crash), or
otherwise when its lease has expired (an owner on another machine, or a recycled pid). An
owner whose claim was taken over gets TransferBusyError on its next change and must stop.

Concurrency on SQLite: any number of readers alongside one writer at a time (WAL); a write
transaction starts with ``BEGIN IMMEDIATE`` and waits up to the busy timeout (30 s) for
another process's write, then fails with ``locked``.

How PostgreSQL differs
----------------------
Same tables, queries and migrations. Writers to different transfers run concurrently; the
guarded stamp locks the transfer's row until commit, so changes to one transfer are
serialised. Migrations take a transaction-scoped advisory lock, so machines opening a new
database at once apply each migration once. JSON columns are ``jsonb``. Leases compare
each client's clock with the stored expiry, so machines sharing a database must keep their
clocks synchronised (NTP) well within the lease. Tables of other programs in the same
database are left alone.
"""

from meshpipe.ledger.errors import LedgerError, LedgerErrorCode, TransferBusyError
from meshpipe.ledger.location import (
    LEDGER_FILE_NAME,
    LEDGER_VARIABLE,
    STATE_DIR_VARIABLE,
    resolve_ledger_location,
    resolve_state_dir,
)
from meshpipe.ledger.records import (
    ChunkRecord,
    ChunkState,
    Claim,
    Direction,
    Event,
    EventKind,
    HistoryFilter,
    HookOutcome,
    ReceiveRecord,
    ReceiveState,
    SendOutcome,
    SendRecord,
    SendState,
    SourceFile,
    TransferRecord,
    TransferState,
    TransferSummary,
)
from meshpipe.ledger.schema import SCHEMA_VERSION
from meshpipe.ledger.store import DEFAULT_LEASE, Ledger, TransferRef

__all__ = [
    "DEFAULT_LEASE",
    "LEDGER_FILE_NAME",
    "LEDGER_VARIABLE",
    "SCHEMA_VERSION",
    "STATE_DIR_VARIABLE",
    "ChunkRecord",
    "ChunkState",
    "Claim",
    "Direction",
    "Event",
    "EventKind",
    "HistoryFilter",
    "HookOutcome",
    "Ledger",
    "LedgerError",
    "LedgerErrorCode",
    "ReceiveRecord",
    "ReceiveState",
    "SendOutcome",
    "SendRecord",
    "SendState",
    "SourceFile",
    "TransferBusyError",
    "TransferRecord",
    "TransferRef",
    "TransferState",
    "TransferSummary",
    "resolve_ledger_location",
    "resolve_state_dir",
]
