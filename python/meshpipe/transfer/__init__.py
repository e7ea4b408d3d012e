"""Pipelined MESH transfers between files and the engine, as staged objects.

:class:`Upload` (:mod:`meshpipe.transfer.upload`) sends a file: prepare, first chunk, middle
chunks, last chunk. :class:`Download` (:mod:`meshpipe.transfer.download`) receives a message:
inspect, attempts per message and per chunk, acknowledge. Both tell a journal
(:mod:`meshpipe.transfer.journal`) each stage boundary; :func:`send_file` and
:func:`receive_message` run them with keyword options.
"""

from meshpipe.transfer.download import (
    Download,
    MessageReceiver,
    ReceiveFailure,
    ReceiveOptions,
    ReceivePlan,
    ReportHandler,
    download_message,
    receive_all,
    receive_message,
    receive_report,
    safe_filename,
)
from meshpipe.transfer.journal import ReceiveJournal, SendJournal
from meshpipe.transfer.results import (
    DEFAULT_CONCURRENCY,
    ProgressCallback,
    ReceiveResult,
    SendResult,
)
from meshpipe.transfer.upload import (
    FileIdentity,
    SendOptions,
    Upload,
    find_sent_message,
    new_local_id,
    send_file,
)

__all__ = [
    "DEFAULT_CONCURRENCY",
    "Download",
    "FileIdentity",
    "MessageReceiver",
    "ProgressCallback",
    "ReceiveFailure",
    "ReceiveJournal",
    "ReceiveOptions",
    "ReceivePlan",
    "ReceiveResult",
    "ReportHandler",
    "SendJournal",
    "SendOptions",
    "SendResult",
    "Upload",
    "download_message",
    "find_sent_message",
    "new_local_id",
    "receive_all",
    "receive_message",
    "receive_report",
    "safe_filename",
    "send_file",
]
