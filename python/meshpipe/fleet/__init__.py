"""Scale-out: one message's chunks sent by many workers on many machines, coordinated by the
PostgreSQL ledger and a job queue in the same database (``pip install meshpipe[fleet]``).

    meshpipe worker --ledger postgresql://mesh@db/meshpipe --concurrency 2   # on each machine
    meshpipe submit /shared/extract.csv --to X26ABC2 --workflow-id WF --ledger postgresql://...

or :func:`submit` from Python, or ``meshpipe watch`` with ``fleet = true`` (each complete file
of an outbox folder: meshpipe.watch.fleet_outbox). The file must be at the same path on every
worker (a shared directory); a worker holds one mailbox's credentials and takes that
mailbox's jobs.

The jobs of one send (meshpipe.fleet.jobs)
-------------------------------------------
1. **chunk 1** (one job): hashes the whole file while it reads chunk 1, posts chunk 1 (it
   creates the message) through retry.post_first_chunk_safely, records the message id, then
   enqueues the range jobs;
2. **chunk ranges** 2..N-1 (``chunks_per_job`` each, any worker): each reads only its chunks
   the ledger does not show accepted, with the engine's chunk-subset splitting (the bytes and
   xxh3-128 of a full split), posts them with retry (two at a time, or one after another in
   order), and records each sent and accepted with the worker's name
   (``meshpipe_chunks.worker``, ledger migration 2);
3. **the last chunk**, enqueued by the range that finds every other chunk accepted, and sent
   only when the ledger shows that; it records the send completed.

Chunk order: for NHS's integration, deployment and live environments (whose API
specification asks for chunks in order), or ``--order in-order``, a chunk is posted only once
the ledger shows the one before it accepted, whichever worker holds each (jobs.py: "in turn");
with any other server chunks 2..N-1 go side by side.

Every job is safe to run twice: what the ledger shows done is skipped, an accepted chunk is
counted once (Ledger.chunk_accepted), and a chunk 1 that may have been posted by a worker that
died is looked up on MESH by its local id before it is posted again.

The whole-file checksum
-----------------------
The fleet sends the **header** form (``meshpipe/1 xxh3-128:<hex> ...`` in chunk 1), with the
hash computed by chunk 1's job while it reads chunk 1, not the trailer form: no worker reads
the whole file in the course of a send (each reads its own chunks), so the trailer's manifest
would need a separate pass over the file by the last job, after every other chunk, on the
critical path; done first, the pass overlaps nothing but chunk 1 and the hash is in the
ledger before any other chunk goes. It also works for ``--compress none`` and for meshpipe
receivers older than the trailer, and ``submit`` stays instant (it reads nothing). Every job
checks the file's size and modification time against the ledger before reading it (not the
inode and device: a shared path has other numbers on other machines); a file changed since
submit fails its send.

Failures
--------
Each request is retried under the client's retry policy; a job that still fails is retried by
the queue (5 more tries, exponential back-off). A worker killed mid-job stops its heartbeat;
after ``lease`` seconds another worker puts its jobs back on the queue (worker.py). A job
that cannot pass (the source removed or changed, a chunk MESH refuses), or the last try of
any, ends failed, and the send is marked failed in the ledger with the reason (the first
failure's reason stands). ``submit`` of the same local id takes a failed send up again.

Receiving
---------
``meshpipe worker --inbox DIR --poll-interval S``: a periodic job (procrastinate's, deferred
once per tick across the fleet, so one worker polls the mailbox each tick) receives every
message of the worker's mailbox into ``DIR`` through the ledger (DurableReceiver: verified,
delivered once, acknowledged). A large message of a meshpipe sender (more than 2 chunks, with
meshpipe's checksum in either form: the whole-file hash in chunk 1's header, ``meshpipe/1``,
or in the manifest at the end of the last chunk, ``meshpipe/2``, the default of ``meshpipe
send --compress``) is received by the whole fleet instead (receive.py): the polling worker
records it, preallocates its partial file at full size in the inbox folder and writes chunk
1; range jobs (any worker) copy chunks 2..N to their offsets (in the kernel), each decoded
and verified by the engine first, fsynced and recorded written with the worker's name (the
last chunk's job records its manifest too); a final job (one per transfer at a time) checks
the whole file's xxh3-128 against the header's or the manifest's, links it into place and
acknowledges. A receive that fails stays failed, unacknowledged, until ``meshpipe receive``
on the same ledger takes it up. Plain senders and messages of 1 or 2 chunks are received
whole by one worker.

Fleet-wide limits (limits.py)
-----------------------------
``--max-in-flight N``: chunk requests in flight per mailbox across every worker, as advisory
locks (a dead worker's slot is freed with its connection); ``--max-rps R``: request starts per
second per mailbox, reserved on the database's clock in ``meshpipe_mailbox_pace``.

The job engine: procrastinate, not pgqueuer
-------------------------------------------
Both keep their queue in PostgreSQL and work over psycopg 3 with asyncio. Compared for this
use (procrastinate 3.10, pgqueuer 1.6):

================  ======================================  ======================================
..                procrastinate                           pgqueuer
================  ======================================  ======================================
retries           per task, persisted in the job row      in-process retry executors; no
                  (attempts, back-off, which errors)      attempt count in the queue
locks             ``lock`` (one job of a key at a time)   per-entrypoint concurrency limit,
                  and ``queueing_lock`` (one waiting)     serialized dispatch, dedupe keys
periodic jobs     ``@app.periodic(cron=...)``,            ``@pgq.schedule(cron)``
                  deduplicated across workers
stalled jobs      worker heartbeats, and a query we run:  per-job heartbeat; picked again after
                  ``get_stalled_jobs`` + ``retry_job``    ``retry_timer`` automatically
asyncio           native, jobs are coroutines; sync API   native
maintenance       shipped schema and SQL migrations,      ``pgq install`` / ``upgrade``; log
                  ``remove_old_jobs`` task, admin CLI     and statistics tables to prune
psycopg 3         the default connector (psycopg_pool)    supported beside asyncpg
rate limits       none                                    per entrypoint (requests a second)
================  ======================================  ======================================

procrastinate is chosen: retries and their counts live in the job row (so the last try, and a
poison job, are known in the job and recorded in the ledger), ``lock`` serialises a send's last
chunk across the fleet without code of ours, its schema is applied from SQL it ships, and it
runs on the psycopg 3 the ledger already uses. Its one gap, re-queueing the jobs of a dead
worker, is one query we run (queue.retry_stalled_jobs). pgqueuer's automatic re-pick by job
heartbeat and its built-in rate limits were the draw the other way; the limits here are ours
because they must hold per mailbox across the fleet, not per entrypoint.
"""

import importlib.util

for _needed in ("procrastinate", "psycopg"):
    if importlib.util.find_spec(_needed) is None:
        raise ImportError(
            f"meshpipe.fleet (meshpipe worker, meshpipe submit) needs {_needed}: "
            "pip install 'meshpipe[fleet]'"
        )

from meshpipe.fleet.jobs import PoisonJob  # noqa: E402
from meshpipe.fleet.limits import MailboxLimits  # noqa: E402
from meshpipe.fleet.submit import DEFAULT_CHUNKS_PER_JOB, Submitted, submit  # noqa: E402
from meshpipe.fleet.worker import WorkerSettings, run_worker  # noqa: E402

__all__ = [
    "DEFAULT_CHUNKS_PER_JOB",
    "MailboxLimits",
    "PoisonJob",
    "Submitted",
    "WorkerSettings",
    "run_worker",
    "submit",
]
