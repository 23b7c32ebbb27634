"""``python -m irm_connector``: the command-line tool (see :mod:`irm_connector.cli`)."""

from __future__ import annotations

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
