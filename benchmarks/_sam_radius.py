"""How far SAM's radius rho moves the forget loss, to carry a rho tuned on one model to another.

rho is a length in weight space (core/sam.py), and models differ in how much the forget loss changes
over that length along its own gradient. Scaling the built-in world's 0.25 by the ratio of weight norms
gave 7 for SmolLM2-135M, which this table shows far outside the first-order regime SAM relies on (the
forget NLL at theta + delta is that of a destroyed model). This script reports, for each rho, the
forget answers' mean NLL at theta and at theta + rho g / ||g|| (g the gradient of the ascent
objective -NLL, as SAM takes it), on one seeded batch of the target:

    python benchmarks/_sam_radius.py MODEL DATA_DIR forget01 0.01,0.05,0.25,1
"""

from __future__ import annotations

import json
import random
import sys

import torch

from llm_unlearn.data.qa import QACollator, QADataset, load_split, pad_id
from llm_unlearn.models.loading import load_model_and_tokenizer


def radius_table(
    model_path: str, data_dir: str, split: str, rhos: list[float], batch_size: int = 8, seed: int = 0
):
    model, tok = load_model_and_tokenizer(model_path)
    rows = load_split(split, data_dir=data_dir)
    rows = random.Random(seed).sample(rows, min(batch_size, len(rows)))
    fmt = "chat_template" if tok.chat_template else "qa"
    batch = QACollator(pad_id(tok))([QADataset(rows, tok, fmt, 1024)[i] for i in range(len(rows))])
    model.eval()  # no dropout: the two losses differ by the perturbation alone
    params = [p for p in model.parameters() if p.requires_grad]
    nll = model(**batch).loss
    (-nll).backward()  # the ascent objective's gradient, as SAM perturbs along it
    grads = [p.grad.detach().clone() for p in params]
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    theta = [p.detach().clone() for p in params]
    out = {
        "model": model_path,
        "split": split,
        "nll_at_theta": float(nll.detach()),
        "grad_norm": float(norm),
        "rho": {},
    }
    with torch.no_grad():
        for rho in rhos:
            for p, t, g in zip(params, theta, grads):
                p.copy_(t + rho * g / norm)
            out["rho"][str(rho)] = float(model(**batch).loss)
        for p, t in zip(params, theta):
            p.copy_(t)
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    model_path, data_dir, split, rhos = sys.argv[1:5]
    print(
        json.dumps(radius_table(model_path, data_dir, split, [float(r) for r in rhos.split(",")]), indent=1)
    )
