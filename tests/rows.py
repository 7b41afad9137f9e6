"""Hand-made results-store rows for report and statistics tests (no training)."""
from __future__ import annotations

from distilbench.hashing import run_key, stable_hash


def student_row(objective: str, seed: int, preds: list, labels: list, extra: dict, hparams: dict,
                task: str = "rte") -> dict:
    """One student row of ``task`` scored by accuracy on ``labels``, init layers 1-3 of mpnet-base."""
    identity = {"task": task, "task_version": "1.0", "objective": objective, "objective_version": "1.0",
                "objective_params": {}, "init": "layers:1,2,3", "student": "mpnet-base[layers:1,2,3]",
                "student_weights": None, "teacher": "mpnet-base", "teacher_key": f"{task}-t", "dev": f"{task}-dev",
                "hparams": hparams, "seed": seed}
    score = sum(p == y for p, y in zip(preds, labels)) / len(labels)
    return {"run_key": run_key(identity), "kind": "student", "task": task, "task_version": "1.0",
            "objective": objective, "objective_version": "1.0", "init": "layers:1,2,3", "teacher": "mpnet-base",
            "student": identity["student"], "seed": seed,
            "config_hash": stable_hash({k: v for k, v in identity.items() if k != "seed"}), "score": score,
            "teacher_score": 0.7, "metrics": {"accuracy": score, "score": score}, "params": identity, "extra": extra}
