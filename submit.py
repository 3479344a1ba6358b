"""herd's command line, as `python submit.py ...` (the `herd` command is the same): see herd/cli.py."""

import sys

from herd.cli import main

if __name__ == "__main__":
    sys.exit(main())
