"""The offline default model: a byte-level BPE tokenizer trained on the world and a tiny Llama.

(`models.build_default_models` trains the tokenizer on the world's analog facts and retain90
authors, not on its forget or holdout authors; see `data/world.py`.)

The tokenizer is GPT-2-style byte-level BPE (every string round-trips: `decode(encode(s)) == s`),
with its own special tokens: `<|bos|>` (prepended by the chat template), `<|pad|>` (distinct from
eos so padding is never mistaken for an end of turn) and a ChatML-style turn format whose
end-of-turn token `<|im_end|>` is also eos, so generation stops at the end of an answer.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, PreTrainedTokenizerFast

BOS, PAD, IM_START, IM_END = "<|bos|>", "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, IM_START, IM_END]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Model sizes by name. `default` was chosen by measurement (see data_cards/world.md); `micro`
# is for tests only: it trains in seconds and is not expected to learn the world.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "micro": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
    "default": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512),
}
# Training hyper-parameters by model size (see `models.build_default_models`): pretraining on the
# analog facts, then QA fine-tuning (target and retain-only reference). AdamW with betas (0.9, 0.98),
# linear warm-up, cosine decay to `min_lr_rate` x peak. `replay` mixes the pretraining rows into
# fine-tuning so the earlier knowledge survives it (a large pretrained model keeps its own).
TRAINING_SIZES: dict[str, dict] = {
    "micro": dict(
        pretrain_epochs=2,
        finetune_epochs=2,
        batch_size=32,
        learning_rate=3e-3,
        warmup_steps=5,
        min_lr_rate=0.1,
        weight_decay=0.0,
        replay=True,
        seed=0,
    ),
    "default": dict(
        pretrain_epochs=6,
        finetune_epochs=9,
        batch_size=32,
        learning_rate=3e-3,
        warmup_steps=50,
        min_lr_rate=0.1,
        weight_decay=0.0,
        replay=True,
        seed=0,
    ),
}


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and wrap it as a HF fast tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def tiny_llama_config(
    tokenizer: PreTrainedTokenizerFast, size: str | dict = "default", max_position_embeddings: int = 256
) -> LlamaConfig:
    """A Llama config with the tokenizer's special ids and tied embeddings.

    `size` names an entry of `MODEL_SIZES`, or gives the dimensions directly (the benchmark's model).
    """
    if isinstance(size, str) and size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(MODEL_SIZES)}")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **(MODEL_SIZES[size] if isinstance(size, str) else size),
    )


def generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    return GenerationConfig(
        do_sample=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
