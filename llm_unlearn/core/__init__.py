"""The training core: `UnlearnTrainer` and everything that shapes an unlearning step or stops it.

    config.py     `UnlearnConfig(TrainingArguments)`: method, term weights, combination, GeN, stop rule
    trainer.py    UnlearnTrainer: forget + retain streams, loss normalization, SAM, logging, checkpoints
    trainer_combine.py  its per-term gradients, their combination, the vanish bookkeeping (combiner.json)
    trainer_gen.py      its GeN probe steps (snapshot, probe losses, the lr refit)
    optim.py      NGDiff's normalized and PCGrad's combinations of per-term gradients (FSDP2 aware)
    sam.py        sharpness-aware unlearning: forget terms at their worst-case neighbour
    gen.py        GeN: the learning rate from a quadratic fit of the loss along the update
    streams.py    the retain stream and GeN's probe stream (pure functions of seed and position)
    stop.py       the `indistinguishable` stop rule behind `--auto`
    stop_data.py  what the stop rule scores (holdout, perturbed answers, retain sample), checked up front
    inputs.py     every data file a command reads, decoded and cross-checked before any work

May import: `runs`, `data`, `models`, `methods`, `eval`.
"""
