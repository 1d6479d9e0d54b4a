"""``resnetlab train``: train from a recipe and flags, or resume a run."""

from __future__ import annotations

import math
import os
import signal

from resnetlab.cli import int_at_least

# short flag -> config key
SHORT_FLAGS = {
    "model": "model.name",
    "norm": "model.norm",
    "data": "data.name",
    "data_root": "data.root",
    "image_size": "data.image_size",
    "subset": "data.subset",
    "epochs": "train.epochs",
    "iterations": "train.iterations",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "optimizer": "optim.name",
    "schedule": "schedule.name",
    "seed": "seed",
    "device": "train.device",
    "pretrained": "model.pretrained",
    "freeze_until": "model.freeze_until",
    "name": "name",
}
# flags whose value is a string as typed: quoted for the YAML parse of overrides, so a run named
# 2024 or 001 stays a string and a path keeps a " #" (YAML would read a number, or cut a comment)
VERBATIM_FLAGS = frozenset({"model", "norm", "data", "data_root", "optimizer", "schedule", "device", "pretrained", "name"})


def add_config_args(p) -> None:
    """Arguments shared by commands that build a config (train, study)."""
    p.add_argument("--config", "-c", metavar="RECIPE.yaml", help="YAML recipe (defaults are used for missing keys)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=0.05 (repeatable)")  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="scale down to a seconds-long run (1 epoch, 2 with train.progressive_resize; small subset)")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a ResNet from a recipe and flags (or --resume RUN_DIR)")
    add_config_args(p)
    p.add_argument("--model", help="model name (see `resnetlab models`)")
    p.add_argument("--norm", help="normalization: bn, in, bin, ln, gn, none, bn-torch, ...")
    p.add_argument("--data", help="dataset: digits, fashion-mnist, mnist, cifar10, cifar100, cifar100-coarse, imagefolder:PATH, synthetic")
    p.add_argument("--data-root", help="folder holding the datasets")
    p.add_argument("--image-size", type=int_at_least(1), help="resize images to this square size")
    p.add_argument("--subset", type=number, help="stratified subset: a fraction (0.5, 1.0) or a number of training images (1000) (data.subset)")
    p.add_argument("--aug", action="append", metavar="SPEC", help="augmentation, e.g. flip or crop:padding=4 (repeatable)")
    p.add_argument("--epochs", type=int_at_least(1), help="training epochs: train.epochs (default: the recipe's, else 10)")
    p.add_argument("--iterations", type=int_at_least(1), help="total optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int_at_least(1), help="images per step and process: train.batch_size (default: the recipe's, else 128)")
    p.add_argument("--lr", type=float, help="peak learning rate: optim.lr (default: the recipe's, else 0.1)")
    p.add_argument("--optimizer", help="sgd, adam or adamw")
    p.add_argument("--schedule", help="constant, step, multistep, cosine or onecycle")
    p.add_argument("--seed", type=int, help="random seed: the config key seed (default: the recipe's, else 0)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--pretrained", help="torchvision:IMAGENET1K_V1, a run folder or a state-dict file")
    p.add_argument("--freeze-until", help="freeze the stem up to this stage (stem, layer1..layer4) or N leading modules")
    p.add_argument("--name", help="run name (folder under output.dir)")
    p.add_argument("--out", help="run folder (default runs/<name>)")
    p.add_argument("--overwrite", action="store_true", help="reuse an existing run folder")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.set_defaults(func=run)


def number(text: str) -> int | float:
    """``--subset 1`` is one image, as ``data.subset=1`` is (read as the fraction 1.0 it kept every
    image); ``1.0`` is the whole training pool."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
    if not math.isfinite(value):  # argparse: "invalid number value: 'inf'"
        raise ValueError(text)
    return value


def collect_overrides(args) -> list[str]:
    import json

    overrides = []
    for attr, key in SHORT_FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            if attr == "subset" and float(value).is_integer() and value > 1:
                value = int(value)
            if attr in VERBATIM_FLAGS:
                value = json.dumps(value)  # a JSON string is a YAML double-quoted string
            overrides.append(f"{key}={value}")
    if getattr(args, "aug", None):
        overrides.append(f"augment={json.dumps(args.aug)}")
    return overrides + list(args.overrides or [])


def _with_flag(args, exc: Exception) -> Exception:
    """``config optim.lr: ...`` -> ``config optim.lr (--lr): ...`` when the message is about a key that
    a flag set (and no --set set it again after); any other error is returned as it is."""
    import re

    msg = str(exc)
    for attr, key in SHORT_FLAGS.items():
        if getattr(args, attr, None) is None or any(o.split("=", 1)[0].strip() == key for o in args.overrides or []):
            continue
        found = re.match(rf"(config )?{re.escape(key)}(=[^\s,;:]*)?(?=[:\s])", msg)  # the subject: KEY or KEY=VALUE
        if found:
            return type(exc)(f"{msg[:found.end()]} (--{attr.replace('_', '-')}){msg[found.end():]}")
    return exc


def build_config(args):
    from resnetlab.config import load_config, smoke_config
    from resnetlab.errors import ConfigError

    try:
        cfg = load_config(args.config, collect_overrides(args))
    except ConfigError as exc:
        raise _with_flag(args, exc) from None
    if getattr(args, "aug", None) and args.config:  # --aug sets augment whole, as --set augment=[...] does
        import logging
        import shlex

        from resnetlab.config import read_yaml
        from resnetlab.data.augment import parse_augment

        given = {str(item) for item in parse_augment(cfg.augment)}
        dropped = [str(i) for i in parse_augment(read_yaml(args.config).get("augment") or []) if str(i) not in given]
        if dropped:  # only what --aug leaves out (the recipe's own items given again, or added to, say nothing)
            logging.getLogger("resnetlab.cli").warning(
                "--aug replaces the recipe's augment; to keep the rest of it, add %s", " ".join(f"--aug {shlex.quote(i)}" for i in dropped))
    if args.smoke:
        cfg = smoke_config(cfg)
    return cfg


def run(args) -> int:
    from resnetlab.trainer import resume, train

    if args.resume:
        given = [f"--{a.replace('_', '-')}" for a in (*SHORT_FLAGS, "aug", "config", "smoke", "out", "overwrite") if getattr(args, a, None)]
        given += [f"--set {o}" for o in args.overrides]
        if given:
            from resnetlab.errors import ConfigError

            raise ConfigError(f"--resume continues a run with its saved config and takes no other options (got {', '.join(given)}); "
                              f"to train with other settings start a new run with --out")  # fmt: skip
        result = resume(args.resume, progress=None if not args.quiet else False)
    else:
        from pathlib import Path

        from resnetlab.errors import ResnetlabError

        cfg = build_config(args)
        if args.smoke:
            from resnetlab.config import smoke_fallback

            cfg = smoke_fallback(cfg)
        run_dir = Path(args.out) if args.out else Path(cfg.output.dir) / cfg.run_name()
        try:
            result = train(cfg, run_dir=run_dir, overwrite=args.overwrite, progress=None if not args.quiet else False)
        except ResnetlabError as exc:  # checks made with the data (train.batch_size=1000 is larger than ...)
            raise _with_flag(args, exc) from None
        except KeyboardInterrupt:  # a signal after training (the test evaluation, the report): its checkpoint is saved
            if (run_dir / "config.yaml").is_file() and os.environ.get("RANK", "0") == "0":
                from resnetlab.trainer import resume_command

                print(f"interrupted after training: `{resume_command(run_dir)}` finishes the run")
            raise
    if os.environ.get("RANK", "0") != "0":
        # under torchrun, rank 0 reports; every rank exits with the run's status
        return 128 + int(result.signal or signal.SIGINT) if result.interrupted else 0
    if result.interrupted:
        from resnetlab.trainer import resume_command

        print(f"interrupted: resume with `{resume_command(result.run_dir)}`")
        return 128 + int(result.signal or signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM
    best = f"{result.best_val_acc:.4f}" if result.best_val_acc is not None else "n/a"
    print(f"run: {result.run_dir}")
    if result.train_metrics:
        print(f"train accuracy: {result.train_metrics['accuracy']:.4f}  (best checkpoint, no augmentation)")
    print(f"best val accuracy: {best}")
    if result.test_metrics:
        print(f"test accuracy: {result.test_metrics['accuracy']:.4f}  macro F1: {result.test_metrics['f1_macro']:.4f}")
    report = result.run_dir / "report.html"
    if report.exists():
        print(f"report: {report}")
    return 0
