"""How often a model's greedy answer contains the reference answer verbatim, per TOFU role.

    python benchmarks/named_answers.py runs/smollm2-tofu-cpu/evals/target-forget01.json \
        runs/smollm2-tofu-cpu/runs/forget01-auto-repair-rare-npo-vstop/eval.json

Reads the `generations` an evaluation stores in its eval.json (`llm-unlearn eval`, the chains of
`smollm2_tofu.py`) and prints, for each file and role (forget, retain, real authors `ra`, world facts
`wf`), the share of questions whose generated answer contains the reference answer (case-insensitive
substring). Real-author and world-fact answers are short names ("George Orwell", "Paris"), so this is
"does the model still name the right entity", which ROUGE-L against a one-line answer blurs. It is a
diagnostic for docs/results.md, not a TOFU metric.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROLES = ("forget", "retain", "ra", "wf")


def named_share(rows: list[dict]) -> float:
    """Share of rows whose `generated` text contains `answer` (case-insensitive); nan for no rows."""
    if not rows:
        return float("nan")
    return sum(r["answer"].strip().lower() in r["generated"].lower() for r in rows) / len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evals", nargs="+", type=Path, help="eval.json files (or run folders holding one)")
    args = parser.parse_args(argv)
    print("| eval | " + " | ".join(ROLES) + " |")
    print("|---|" + "---|" * len(ROLES))
    for path in args.evals:
        file = path / "eval.json" if path.is_dir() else path
        if not file.is_file():
            raise SystemExit(f"{file} does not exist: pass an eval.json file or a run folder that holds one")
        generations = json.loads(file.read_text()).get("generations")
        if not generations:
            raise SystemExit(f"{file} stores no generations: evaluate with generation on (llm-unlearn eval)")
        shares = [named_share(generations.get(role, [])) for role in ROLES]
        print(f"| {file} | " + " | ".join(f"{s:.3f}" for s in shares) + " |")


if __name__ == "__main__":
    main()
