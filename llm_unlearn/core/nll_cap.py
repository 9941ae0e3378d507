"""`--forget_token_nll_cap holdout`: how far to push a forget token down, read off facts the model never saw.

The bounded forget term (methods/common.py, `capped_nll_sum`) ascends on min(-log p(y_t | y_<t), c).
Forgetting means answering the forget questions as a model that never saw them would, so the cap is
the mean NLL that the model itself gives the answer tokens of the stop rule's holdout split (questions
of the same kind about entities it never saw), before training:

    c = (1 / N_H) * sum over holdout answer tokens t of -log p_target(y_t | y_<t)

counting the same tokens the forget term trains on: with `--forget_token_max_df`, only the holdout
answer tokens that the same document frequencies call rare; with `--forget_token_siblings`, only those
none of the holdout answer's own siblings has (data/rare_tokens.py); else every answer token and the
end token. Scored in eval mode without gradient, with the same encoding as training
(pipeline/forget_tokens.py, `resolve_nll_cap`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..data.qa import QACollator
from ..methods.common import eval_mode, token_logprobs


def token_nlls(model, features: Sequence[dict], collator: QACollator, batch_size: int = 16) -> np.ndarray:
    """-log p(y_t | y_<t) of every labelled token of `features` (encoded QA examples), in order, float64."""
    out = []
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(features), batch_size):
            batch = {k: v.to(device) for k, v in collator(features[start : start + batch_size]).items()}
            logprobs, mask = token_logprobs(model, batch)
            out.append((-logprobs)[mask].double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def mean_token_nll(model, features: Sequence[dict], collator: QACollator, batch_size: int = 16) -> float:
    """Mean -log p(y_t | y_<t) over every labelled token of `features` (encoded QA examples)."""
    nll = token_nlls(model, features, collator, batch_size)
    if not len(nll) or not np.isfinite(nll).all():
        raise ValueError("no finite answer-token NLL to set --forget_token_nll_cap from")
    return float(nll.mean())
