"""`python -m llm_unlearn ...`: the same as the `llm-unlearn` command."""

import sys

from .cli.commands import main

sys.exit(main())
