"""`distilbench ls`: what is registered (objectives, tasks, corpora, inits, models), one name per line first."""
from __future__ import annotations

from ..errors import UsageError


def add_parser(sub) -> None:
    ls = sub.add_parser("ls", allow_abbrev=False, help="list what is registered, one name per line first")
    ls.add_argument("what", choices=["objectives", "tasks", "corpora", "inits", "models"])


def main(what: str) -> int:
    if what == "objectives":
        from ..objectives import OBJECTIVES
        from ..objectives.layerwise import without_labels
        for name in OBJECTIVES:
            cls = OBJECTIVES.get(name)
            options = ", ".join(o.name for o in cls.declared_options()) or "none"
            # `distilbench pretrain` (task-agnostic): the label-free layer objectives; KD needs the teacher's MLM head
            why = without_labels(cls)
            general = "yes" if why is None else f"no: it {why}"
            print(f"{name}\tv{cls.version}\t{cls.paper}\toptions: {options}\tpretrain: {general}")
    elif what == "tasks":
        from ..data.tasks import TASKS
        for name in TASKS:
            t = TASKS.get(name)
            print(f"{name}\tv{t.version}\t{t.kind}\tmain score: {t.main_score}")
    elif what == "corpora":  # unlabelled text for task-agnostic distillation (registry/corpora/)
        from ..data.corpus import CORPORA
        for name in CORPORA:
            c = CORPORA.get(name)
            print(f"{name}\tv{c.version}\t{len(c.sources)} sources: {', '.join(s.name for s in c.sources)}\t"
                  f"held out: {c.held_out:g}")
    elif what == "inits":
        from ..models.inits import INITS
        for name in INITS:
            print(f"{name}\t{(INITS.get(name).__doc__ or '').strip()}")
    else:
        from ..models.loading import MODELS, describe
        for name in MODELS:
            try:
                d = describe(name)
                print(f"{name}\t{d.get('architecture')}\t{d.get('layers')} layers\thidden {d.get('hidden')}\t"
                      f"pooling {d.get('pooling')}\t{d.get('path')}")
            except UsageError as exc:
                print(f"{name}\tnot installed: {exc}")
    return 0


__all__ = ["add_parser", "main"]
