"""`llm-unlearn bench`: costs measured side by side in one run, never by a timed unit test.

    train.py  NGDiff / GeN step time and memory against gradient difference
    eval.py   batched evaluation against one sample at a time, on the same model and data

May import: every layer below `pipeline`.
"""
