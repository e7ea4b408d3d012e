"""A second meshpipe process for the ledger tests: ``claim LOCATION TRANSFER`` claims the
transfer, prints ``claimed`` and holds it until a line (or EOF) arrives on stdin;
``write LOCATION TRANSFER`` records every chunk of a receive written, one commit each, then
prints ``done``."""

from __future__ import annotations

import sys

from meshpipe.ledger import Ledger


def main(argv: list[str]) -> int:
    command, location, transfer_text = argv
    transfer_id = int(transfer_text)
    with Ledger.open(location) as ledger:
        if command == "claim":
            with ledger.claim(transfer_id) as held:
                print("claimed", held.owner, flush=True)
                sys.stdin.readline()
            print("released", flush=True)
        elif command == "write":
            record = ledger.transfer(transfer_id)
            print("started", flush=True)
            for number in range(1, (record.chunk_count or 0) + 1):
                ledger.chunk_written(transfer_id, number, f"{number:032x}", 10)
            print("done", flush=True)
        else:
            raise SystemExit(f"unknown command {command!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
