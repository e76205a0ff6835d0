"""``python -m minicnn.cli ...``: the same as the ``minicnn`` command."""
import sys

from .commands import main

sys.exit(main())
