"""Run folders, the bottom layer: everything a run writes and how it writes it.

    folder.py   atomic writes, `status.json` (live, complete, failed, interrupted), run claims (flock),
                `run_info.json`, checkpoint marks, the cache folder (`$LLM_UNLEARN_CACHE`)
    redact.py   secrets and local paths kept out of logs, records, cards and reports
    options.py  `ConfigError`, "did you mean", and the range check every option dataclass uses
    scratch.py  temp folders named after their process, so the next run clears those a SIGKILL left
    hardware.py one line naming the hardware a number was measured on (records, reports, cards)

May import: nothing else from llm_unlearn (the standard library only).
"""
