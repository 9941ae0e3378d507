"""End-to-end jobs a command or a Python caller starts, each writing a complete run folder.

    unlearn.py   `unlearn(model_args, data_args, config, eval_args)`: validate, train, save, evaluate
    evaluate.py  a model plus its retain-only reference -> eval.json (with the evaluation cache)
    run_eval.py  what an evaluation may not change in a run's own eval.json (other data or settings)
    distill.py   UNDO (arXiv 2506.06278): noise a copy of an unlearned run and distill its outputs
    demo.py      `llm-unlearn demo`: world -> models -> graddiff and ngdiff -> eval -> report + checks

May import: every layer below it; only `cli` imports it.
"""
