"""The ``edgelstm`` command line: ``main`` builds the parser and runs one subcommand.

``main`` holds the parser and the small subcommands (convert, inspect, targets, profile,
bundle-add); ``run`` streams a CSV through a bundle; ``demo`` is the C-MAPSS walk-through; the
``bridge`` and ``simulate`` subcommands come from :mod:`firmware_bridge.cli`. Each subcommand
imports what it needs when it runs, so ``edgelstm run`` on a device never loads the converter.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
