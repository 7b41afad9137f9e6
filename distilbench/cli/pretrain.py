"""`distilbench pretrain`: task-agnostic distillation of a pretrained teacher into a general student on unlabelled text
(:mod:`distilbench.training.families.general`), which `distilbench run --init pretrained:FOLDER` then fine-tunes."""
from __future__ import annotations

import shlex
import sys
from typing import Any

from ..config import RunConfig, build_config
from .flags import Formatter, add_config_flags

PRETRAIN_EXAMPLES = """examples:
  distilbench pretrain --objective att-mse --teacher minilm-l6 --init random --student-layers 3 \\
      --corpus general-local --data-dir ../shared/data --tokens 2000000 --out students/att-mse-random
  distilbench pretrain --objective hid-cls --teacher minilm-l6 --init first-k --corpus my-text/ --steps 500 --out students/h
  distilbench run --init pretrained:students/att-mse-random --teacher minilm-l6 --task sst2 --objective none --seeds 3
"""


def add_parser(sub, flags: bool = True) -> None:
    p = sub.add_parser("pretrain", allow_abbrev=False, formatter_class=Formatter, epilog=PRETRAIN_EXAMPLES,
                       help="task-agnostic distillation: a general student distilled on unlabelled text, saved to --out")
    g = p.add_argument_group("pretraining", "the corpus, the budget and where the student goes (resumable: rerun the "
                             "same command after a kill)")
    g.add_argument("--corpus", default="general-local",
                   help="a registered corpus (`distilbench ls corpora`), or a text file or folder of .txt files, one line "
                        "of text per line (default: general-local)")
    g.add_argument("--steps", type=int, default=None, help="optimiser steps (default: one pass over the training blocks)")
    g.add_argument("--tokens", type=int, default=None,
                   help="or a token budget: steps = ceil(tokens / (batch size x max length))")
    g.add_argument("--seed", type=int, default=0, help="the student's init, data order and dropout (default 0)")
    g.add_argument("--out", required=True, help="the student's folder (a new folder; a rerun resumes or finds it done)")
    g.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (default 200)")
    if flags:  # they load the objectives (torch): only for the command being parsed
        from ..training.families.general_plan import PRETRAIN_DEFAULTS, pretrain_options

        p.set_defaults(**PRETRAIN_DEFAULTS)
        add_config_flags(p, pretrain_options)
        for action in p._actions:  # their help shows this command's default, not a task run's
            if action.dest in PRETRAIN_DEFAULTS:
                old = RunConfig.__dataclass_fields__[action.dest].default
                action.help = action.help.replace(f"(default: {old})", f"(default: {PRETRAIN_DEFAULTS[action.dest]})")


def main(args: dict[str, Any], argv: list[str]) -> int:
    from ..training.families.general import Budget, plan_general, pretrain
    from ..training.families.general_plan import check_counts

    own = {k: args.pop(k) for k in ("corpus", "steps", "tokens", "seed", "out", "checkpoint_every")}
    check_counts(own, lambda key: "--" + key.replace("_", "-"))
    cfg = build_config(args)
    plan = plan_general(cfg, own["corpus"], Budget(own["steps"], own["tokens"]), own["seed"], own["out"],
                        own["checkpoint_every"])
    print(f"pretraining {plan.objective.name} from {cfg.teacher} ({plan.init.spec}, layer pairs {plan.pairs}) on "
          f"{plan.corpus['name']}: {plan.corpus['train_blocks']:,} blocks ({plan.corpus['train_tokens']:,} tokens), "
          f"{plan.total_steps:,} steps of {cfg.batch_size}, {plan.precision}; key {plan.key}", file=sys.stderr)
    command = "distilbench " + " ".join(shlex.quote(a) for a in argv)
    out = pretrain(plan, lambda line: print(line, file=sys.stderr), command)
    print(out)
    return 0


__all__ = ["add_parser", "main"]
