"""``python -m wsgiscale``: the same command as the ``wsgiscale`` console script."""

import sys

from wsgiscale import main

if __name__ == "__main__":
    sys.exit(main())
