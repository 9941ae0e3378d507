"""The command line, the top layer: `llm-unlearn SUBCOMMAND ...`.

    parse.py     recipes (flat YAML) + command-line options over every feature's option dataclass; `--help`
    commands.py  the subcommands: demo, world, train, unlearn, eval, probe, report, push, ls, bench
    run_eval.py  `eval` of a run directory: the run's recorded settings, and what may not replace its eval.json

May import: every layer.
"""

from .commands import main

__all__ = ["main"]
