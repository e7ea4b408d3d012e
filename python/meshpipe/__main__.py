"""``python -m meshpipe``: the command line (meshpipe.cli)."""

import sys

from meshpipe.cli import main

if __name__ == "__main__":
    sys.exit(main())
