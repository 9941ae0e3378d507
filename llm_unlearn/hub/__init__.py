"""Publishing: `llm-unlearn push` and the model card that says what a run is and what it shows.

    push.py  stage an allow-listed folder from a complete run (safetensors only) and upload it
    card.py  the model card: metadata, model-index results, tables, limitations, citations

May import: `runs`, `data`, `models`, `methods`.
"""
