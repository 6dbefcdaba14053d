"""``python -m exmodel ...``: the same as the ``exmodel`` command."""

import sys

from exmodel.cli import main

if __name__ == "__main__":
    sys.exit(main())
