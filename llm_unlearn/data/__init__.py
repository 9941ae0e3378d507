"""Data: TOFU-format QA files, the built-in fictitious-author world, held-out splits, data options.

    qa.py       split loading and checks, prompt formats, exact answer masking, the QA collator
    world.py    the offline fictitious-author world in TOFU's schema (deterministic from a seed)
    heldout.py  a forget set cut into an attack part and a held-out part (probes, the stop rule)
    args.py     `DataArgs`: where the data comes from and how prompts are formatted

May import: `runs`.
"""
