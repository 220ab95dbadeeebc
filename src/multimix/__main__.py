"""``python -m multimix`` = the ``multimix`` command."""

import sys

from .cli import main

sys.exit(main())
