"""How unlikely a model finds the forget and holdout answers, token by token: rare tokens apart from the rest.

    python benchmarks/token_nll.py --data_dir WORLD --forget_split forget05 MODEL [MODEL ...]

For each model and each of the forget split and its holdout (`holdoutNN`), the mean NLL -log p(y_t | y_<t)
over every answer token (the end token included) and over the answer tokens that no answer of the retain
split contains (`--forget_token_max_df 0`'s selection, data/rare_tokens.py), with quartiles and the 90th
percentile. Written for issue 22's question of how far rare-token ascent pushes the forget answers: on the
built-in world the retain-only reference gives the forget and holdout answers the same numbers, so a
model that has forgotten should too. Prints one line per (model, split); nothing is written.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from llm_unlearn.core.nll_cap import token_nlls
from llm_unlearn.data.qa import QACollator, QADataset, load_split, pad_id
from llm_unlearn.data.rare_tokens import document_frequency, keep_rare_labels
from llm_unlearn.models.loading import load_model, load_tokenizer

RETAIN = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}


def describe(nll: np.ndarray) -> str:
    q = np.percentile(nll, [25, 50, 75, 90])
    return f"mean {nll.mean():.2f} (quartiles {q[0]:.2f} {q[1]:.2f} {q[2]:.2f}, p90 {q[3]:.2f}; {len(nll)} tokens)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model folders (a run folder holds its final weights)")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--forget_split", default="forget05", choices=sorted(RETAIN))
    parser.add_argument("--prompt_format", default="chat_template")
    args = parser.parse_args()
    torch.set_num_threads(1)
    holdout = args.forget_split.replace("forget", "holdout")
    encode = dict(prompt_format=args.prompt_format, max_length=1024, system_prompt=None)
    tokenizer = load_tokenizer(args.models[0])
    collator = QACollator(pad_id(tokenizer))
    retain = QADataset(load_split(RETAIN[args.forget_split], data_dir=args.data_dir), tokenizer, **encode)
    frequency = document_frequency(retain.features)
    for path in args.models:
        model = load_model(path).eval()
        for split in (args.forget_split, holdout):
            whole = QADataset(load_split(split, data_dir=args.data_dir), tokenizer, **encode).features
            rare = [dict(f, labels=list(f["labels"])) for f in whole]
            keep_rare_labels(rare, frequency, 0.0)
            print(f"{path} {split}: all answer tokens {describe(token_nlls(model, whole, collator))}; "
                  f"rare tokens {describe(token_nlls(model, rare, collator))}")  # fmt: skip


if __name__ == "__main__":
    main()
