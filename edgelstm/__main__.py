"""``python -m edgelstm`` is the ``edgelstm`` command."""

import sys

from .cli import main

sys.exit(main())
