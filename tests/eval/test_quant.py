"""Round-to-nearest weight quantization (eval/quant.py) on hand-computed matrices and a tiny Llama: pytest tests/test_quant.py"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from llm_unlearn.eval.quant import bnb_unavailable, dequantize, quantize_codes, quantized_copy, rtn


def test_four_bit_codes_and_values_match_a_hand_computation():
    w = torch.tensor([[1.0, -0.45, 0.25, 0.1], [0.0, 0.0, 0.0, 0.0], [0.35, -0.6, 0.0, 0.0]])
    codes, scale = quantize_codes(w, bits=4, group_size=2)
    # q_max = 7. Group [1, -0.45]: s = 1/7, -0.45 * 7 = -3.15 -> -3. Group [0.25, 0.1]: s = 0.25/7,
    # 0.1 / s = 2.8 -> 3. Group [0.35, -0.6]: s = 0.6/7, 0.35 / s = 4.08 -> 4. Zero groups
    # keep scale 0 and code 0.
    assert codes.tolist() == [[7, -3, 7, 3], [0, 0, 0, 0], [4, -7, 0, 0]]
    assert scale.flatten().tolist() == pytest.approx([1 / 7, 0.25 / 7, 0.0, 0.0, 0.6 / 7, 0.0])
    expected = torch.tensor([[1.0, -3 / 7, 0.25, 3 * 0.25 / 7], [0.0] * 4, [4 * 0.6 / 7, -0.6, 0.0, 0.0]])
    assert torch.allclose(rtn(w, bits=4, group_size=2), expected, atol=1e-7)


def test_error_is_at_most_half_a_step_of_its_group_and_a_short_last_group_is_handled():
    torch.manual_seed(0)
    w = torch.randn(6, 13) * torch.logspace(-2, 1, 13)  # columns of very different sizes; 13 = 4 + 4 + 4 + 1
    for bits in (8, 4):
        codes, scale = quantize_codes(w, bits=bits, group_size=4)
        assert scale.shape == (6, 4)
        step_per_column = scale.repeat_interleave(4, dim=1)[:, :13]
        err = (w - dequantize(codes, scale, 4)).abs()
        assert (err <= step_per_column / 2 + 1e-7).all()
        assert codes.abs().max() == 2 ** (bits - 1) - 1  # the grid's edge is used, never exceeded


def test_quantizing_twice_gives_the_same_codes_and_weights():
    torch.manual_seed(1)
    w = torch.randn(8, 64)
    for bits in (8, 4):
        once = rtn(w, bits, group_size=16)
        codes_once, _ = quantize_codes(w, bits, 16)
        codes_twice, _ = quantize_codes(once, bits, 16)
        assert torch.equal(codes_once, codes_twice)
        assert torch.allclose(rtn(once, bits, group_size=16), once, rtol=1e-6, atol=0)
        assert not torch.equal(once, w)


def test_eight_bits_are_closer_to_the_weights_than_four():
    torch.manual_seed(2)
    w = torch.randn(32, 256)
    err8 = (rtn(w, 8, 128) - w).abs()
    err4 = (rtn(w, 4, 128) - w).abs()
    assert err8.max() < err4.max() / 10  # steps differ by 127/7 ~ 18x
    assert err8.mean() < err4.mean() / 10


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    return LlamaForCausalLM(config)


def test_a_quantized_copy_changes_only_linear_layers_outside_lm_head_and_leaves_the_model_alone():
    model = _tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy8, report = quantized_copy(model, bits=8, group_size=16)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert report["skipped_modules"] == ["lm_head"]
    linear = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)} - {"lm_head"}
    assert set(report["quantized_modules"]) == linear and len(linear) == 7
    after = copy8.state_dict()
    for key, value in before.items():
        module = key.rsplit(".", 1)[0]
        if module in linear:
            assert not torch.equal(after[key], value), key
            assert torch.equal(after[key], rtn(value, 8, 16))
        else:  # embeddings (tied to lm_head), norms
            assert torch.equal(after[key], value), key

    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():
        full = model(ids).logits
        gap8 = (quantized_copy(model, 8, 16)[0](ids).logits - full).abs().max()
        gap4 = (quantized_copy(model, 4, 16)[0](ids).logits - full).abs().max()
    assert 0 < gap8 < gap4


def test_bad_bits_or_group_size_are_refused():
    with pytest.raises(ValueError, match="choose 2 to 8"):
        rtn(torch.ones(2, 2), bits=16)
    with pytest.raises(ValueError, match="positive number of input columns"):
        rtn(torch.ones(2, 2), bits=4, group_size=0)


def test_bitsandbytes_loading_says_why_it_is_skipped_here():
    reason = bnb_unavailable()
    if torch.cuda.is_available() and reason is None:
        pytest.skip("bitsandbytes and CUDA are present")
    assert reason and ("bitsandbytes" in reason or "CUDA" in reason)
