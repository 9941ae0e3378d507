"""Round-to-nearest (RTN) weight quantization in pure torch, to ask: does the forgotten come back when
the model is quantized for serving?

Zhang et al., "Catastrophic Failure of LLM Unlearning via Quantization" (arXiv 2410.16454), found
that unlearning with a small learning rate and a utility term moves weights so little that 4-bit
quantization maps many of them back onto the same grid points as the original model's, and a
4-bit unlearned model recovers much of the forgotten knowledge (8-bit much less). The probe
therefore re-evaluates the forget set after quantizing, beside the original and the retain-only
models quantized the same way.

Scheme (symmetric per-group absmax, the RTN baseline of GPTQ, arXiv 2210.17323, and AWQ, arXiv
2306.00978, which also use groups of 128 input columns): for a weight W of shape [out, in], the input dimension is cut into groups of `group_size` columns
(the last group of a row may be shorter). For a group g with values w_i and b bits,

    q_max = 2^(b-1) - 1                    (127 for 8 bits, 7 for 4 bits; -2^(b-1) is not used)
    s_g   = max_i |w_i| / q_max            (s_g = 0 for an all-zero group, which stays zero)
    c_i   = clamp(round(w_i / s_g), -q_max, q_max)      the integer code
    w'_i  = c_i * s_g                      the dequantized weight, written back in place

so |w_i - w'_i| <= s_g / 2 for every weight. The group's largest |w_i| gets code +-q_max, so a second
pass finds the same absmax, scale and codes: quantizing twice equals quantizing once (up to float
rounding of the scale).

Which modules are quantized: the weight of every `nn.Linear` (attention and MLP projections), on a
copy of the model. Left in full precision: embeddings (`nn.Embedding`: a lookup table, not a matmul,
and int-k embedding tables are not what serving stacks do), normalization weights and biases (tiny
1-D tensors), and by default `lm_head`: GPTQ, AWQ and bitsandbytes all keep it in 16 bits, and in
models with tied embeddings (ours, Llama-3.2-1B) quantizing it in place would quantize the input
embedding table too. Pass `skip=()` to quantize it as well.

Where `bitsandbytes` and a CUDA device exist, `load_bnb_4bit` loads a model in bitsandbytes' NF4
4-bit format, a common way to serve 4-bit models on GPUs; elsewhere `bnb_unavailable` says why not.
"""

from __future__ import annotations

import copy
import importlib.util

import torch
from torch import nn

QUANT_BITS = (8, 4)
DEFAULT_GROUP_SIZE = 128
DEFAULT_SKIP = ("lm_head",)


def _check(bits: int, group_size: int) -> None:
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"cannot quantize to {bits} bits; choose 2 to 8 (e.g. 8 or 4)")
    if group_size < 1:
        raise ValueError(f"group size {group_size} must be a positive number of input columns (e.g. 128)")


def _grouped(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, int]:
    """[out, in] -> [out, n_groups, group_size], zero-padded on the right (zeros never raise an absmax)."""
    out_features, in_features = weight.shape
    pad = -in_features % group_size
    padded = nn.functional.pad(weight, (0, pad))
    return padded.reshape(out_features, -1, group_size), pad


def quantize_codes(weight: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes [out, in] (int8) and per-group scales [out, n_groups] (float32) of a 2-D weight."""
    _check(bits, group_size)
    if weight.dim() != 2:
        raise ValueError(f"RTN quantizes 2-D [out, in] weights; got shape {tuple(weight.shape)}")
    q_max = 2 ** (bits - 1) - 1
    groups, pad = _grouped(weight.detach().float(), group_size)
    scale = groups.abs().amax(dim=-1) / q_max  # [out, n_groups]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.clamp(torch.round(groups / safe.unsqueeze(-1)), -q_max, q_max)
    codes = codes.reshape(weight.shape[0], -1)[:, : weight.shape[1]]
    return codes.to(torch.int8), scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """codes * scale of each code's group: the [out, in] float32 weight the codes stand for."""
    per_column = scale.repeat_interleave(group_size, dim=1)[:, : codes.shape[1]]
    return codes.float() * per_column


def rtn(weight: torch.Tensor, bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> torch.Tensor:
    """The quantize-dequantize image of `weight` (same shape and dtype)."""
    codes, scale = quantize_codes(weight, bits, group_size)
    return dequantize(codes, scale, group_size).to(weight.dtype)


@torch.no_grad()
def quantize_model_(
    model: nn.Module, bits: int, group_size: int = DEFAULT_GROUP_SIZE, skip: tuple[str, ...] = DEFAULT_SKIP
) -> dict:
    """Replace every `nn.Linear` weight of `model` by its RTN image, in place (see the module docstring).

    A module is skipped when its name or its name's last part is in `skip`. Returns what was done:
    bits, group size, the quantized and skipped module names, and the number of quantized weights.
    """
    _check(bits, group_size)
    quantized, skipped, n_weights = [], [], 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if name in skip or name.rsplit(".", 1)[-1] in skip:
            skipped.append(name)
            continue
        module.weight.copy_(rtn(module.weight, bits, group_size))
        quantized.append(name)
        n_weights += module.weight.numel()
    if not quantized:
        raise ValueError("the model has no nn.Linear weights outside `skip`; nothing to quantize")
    return {
        "method": "rtn_symmetric_absmax",
        "bits": bits,
        "group_size": group_size,
        "quantized_modules": quantized,
        "skipped_modules": skipped,
        "quantized_weights": n_weights,
    }


def quantized_copy(
    model: nn.Module, bits: int, group_size: int = DEFAULT_GROUP_SIZE, skip: tuple[str, ...] = DEFAULT_SKIP
) -> tuple[nn.Module, dict]:
    """(a deep copy of `model` with RTN weights, the report of `quantize_model_`); `model` is untouched."""
    copied = copy.deepcopy(model)
    return copied, quantize_model_(copied, bits, group_size, skip)


def bnb_unavailable() -> str | None:
    """None where bitsandbytes 4-bit loading can run here, else the reason it cannot."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install bitsandbytes)"
    if not torch.cuda.is_available():
        return "bitsandbytes 4-bit needs a CUDA device and none is available"
    return None


def load_bnb_4bit(path: str):
    """Load a causal LM from `path` in bitsandbytes NF4 4-bit (compute in float32, lm_head kept as is).

    Only where `bnb_unavailable()` is None; the RTN probe above covers CPUs.
    """
    reason = bnb_unavailable()
    if reason is not None:
        raise RuntimeError(f"cannot load {path} in 4-bit with bitsandbytes: {reason}")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    return AutoModelForCausalLM.from_pretrained(
        path, quantization_config=config, device_map={"": 0}, use_safetensors=True
    )
