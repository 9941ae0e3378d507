"""`python -m llm_unlearn.cli ...`: the same as the `llm-unlearn` command."""

import sys

from .commands import main

sys.exit(main())
