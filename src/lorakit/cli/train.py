"""`lorakit train`, `quickstart` and `inspect`: runs from a config."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import InputError
from .common import RAW, config_epilog, positive_int


def cmd_train(args) -> int:
    from ..train.config import RunConfig
    from ..train.loop import train
    from ..yamlconfig import load_config

    config = load_config(RunConfig, args.config, args.overrides)  # checked here, before any process starts
    if args.nproc is not None:
        return _launch(args)
    if args.max_restarts is not None:
        raise InputError("--max-restarts goes with --nproc N (or use torchrun --max-restarts)")
    result = train(config, resume=args.resume)
    if int(os.environ.get("RANK", 0)) != 0:
        return 0
    ev = result.final_eval
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in (ev.metrics() if ev else {}).items())
    print(f"done: {result.steps} steps in {result.seconds:.0f}s; {metrics}")
    print(f"saved: {result.adapter_dir}  (metrics.jsonl, loss_curve.png and config.yaml in {result.output_dir})")
    return 0


def _restarts(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of restarts (0 or more), got {text!r}")
    return int(text)


def _launch(args) -> int:
    """`--nproc N`: replace this process by torchrun running the same command on N local processes."""
    from ..train.distributed import launch_command

    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        raise InputError("--nproc inside a torchrun launch: give torchrun the process count, not lorakit")
    argv = ["train", args.config, *args.overrides] + ["--resume"] * args.resume + ["--debug"] * bool(args.debug)
    command = launch_command(args.nproc, argv, args.max_restarts or 0)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return 0  # not reached


def cmd_quickstart(args) -> int:
    from ..train.quickstart import run_quickstart

    run_quickstart(args.overrides)
    return 0


def cmd_inspect(args) -> int:
    from ..analysis import describe_adapted, describe_model
    from ..models import load_causal_lm, load_classifier
    from ..train.config import RunConfig, Task
    from ..train.prepare import attach_method
    from ..yamlconfig import load_config

    overrides, name = list(args.overrides), args.model
    if name and "=" in name:  # `lorakit inspect lora.r=8`: no model given, only overrides
        overrides, name = [name, *overrides], None
    run = load_config(RunConfig, args.config, overrides, base=None if args.config else {"data": {"train": "-"}})
    name = name or run.model.name
    model, _ = load_classifier(name) if run.task is Task.CLASSIFICATION else load_causal_lm(name)
    print(describe_model(model))
    names = attach_method(model, run)
    what = "full fine-tuning" if run.spec is None else f"{run.method} {run.spec.summary(run.adapter)}"
    print(describe_adapted(model, names, what))
    return 0


def register(sub, parent) -> None:
    p = sub.add_parser("train", parents=[parent], help="fine-tune from a YAML config", epilog=config_epilog(),
                       formatter_class=RAW,
                       description="Fine-tune as CONFIG says; dotted.key=value arguments override the file.")
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value", help="e.g. train.lr=1e-3 lora.r=8")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--nproc", type=positive_int, metavar="N",
                   help="train on N local processes: runs `torchrun --standalone --nproc-per-node N -m lorakit train ...`")
    p.add_argument("--max-restarts", type=_restarts, metavar="K",
                   help="with --nproc: restart all processes up to K times after a failure; they resume from the "
                        "newest checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("quickstart", parents=[parent],
                       help="evaluate, fine-tune and re-evaluate SmolLM2 on the bundled task",
                       epilog=config_epilog(), formatter_class=RAW,
                       description="The bundled demo run (configs/quickstart.yaml); dotted.key=value overrides apply.")
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("inspect", parents=[parent],
                       help="a model's adaptable modules, suggested targets, trainable-param count",
                       epilog="examples:\n  lorakit inspect\n  lorakit inspect --config configs/quickstart.yaml\n"
                              "  lorakit inspect path/to/model lora.r=8 'lora.target_modules=[q_proj,v_proj]'\n"
                              "  lorakit inspect all-minilm-l6-v2 task=classification",
                       formatter_class=RAW)
    p.add_argument("model", nargs="?", help="model (default: the config's model, else SmolLM2-135M)")
    p.add_argument("--config", help="run config whose model and adapter to count")
    p.add_argument("overrides", nargs="*", default=[], metavar="lora.key=value")
    p.set_defaults(func=cmd_inspect)
