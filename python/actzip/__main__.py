"""``python -m actzip``: the command line (see actzip.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
