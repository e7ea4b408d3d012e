"""``python -m meshpipe.server``: the same as ``meshpipe serve``."""

import sys

from meshpipe.server.cli import main

sys.exit(main())
