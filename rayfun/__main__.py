"""``python -m rayfun``: the ``rayfun`` command."""

import sys

from .cli import main

sys.exit(main())
