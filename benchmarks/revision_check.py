"""Rerun stored runs at the checkout's revision and compare their scores (issue 35, item 2).

A committed store may hold cells trained at several revisions; a claim comparing them is flagged. This script shows
whether the training path's changes moved the numbers: for each ``OBJECTIVE@INIT:SEED`` it reads the stored row,
rebuilds its `distilbench run` command from the row's own identity (task, objective and its options, init, teacher,
seed, training hyper-parameters; teacher settings, which the identity holds only as a hash, come after ``--``), runs
it into a scratch store, checks that the rerun has the same run key (the same configuration), and prints the stored
and the new score side by side.

    python benchmarks/revision_check.py reports/p002-table3/results.sqlite --data-dir ../shared/data/glue \\
        --cell kd@layers:4,8,12:0 --cell kd@layers:1,2,3:0 -- --teacher-epochs 2 --pooling cls

``--compare OTHER`` reruns nothing: it lists the runs the two stores share (the same run key: the same
configuration) with each store's score and the code that computed it (its fingerprint, else its git revision).

    python benchmarks/revision_check.py reports/pilot-small/results.sqlite --compare reports/ted-table2-small/results.sqlite

Rows stored before the precision was recorded were trained in fp32: the rerun uses ``--mixed-precision fp32``
unless the row names another. Scores need not be bit-identical across CPUs (other vector instructions, other
rounding); read a difference against the cell's spread over seeds, which the script prints beside it.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from distilbench.results.revisions import row_revision

IDENTITY_FLAGS = ("pooling", "teacher_cache", "transfer_examples", "eval_stride", "teacher_topk")
HPARAM_FLAGS = ("batch_size", "epochs", "lr", "max_grad_norm", "max_length", "max_train_examples",
                "selection_fraction", "warmup_ratio", "weight_decay")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def rows_of(store: Path, objective: str | None = None, init: str | None = None) -> list[dict]:
    """The store's student rows (of one objective and init, when given)."""
    con = sqlite3.connect(store)
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM runs WHERE kind = 'student'")
            if objective is None or (r["objective"] == objective and r["init"] == init)]
    con.close()
    return rows


def command(row: dict, data_dir: str, results: Path, extra: list[str]) -> list[str]:
    params = json.loads(row["params"])
    hp = params["hparams"]
    args = [sys.executable, "-m", "distilbench", "run", "--task", row["task"], "--objective", row["objective"],
            "--init", row["init"], "--teacher", row["teacher"], "--seed-list", str(row["seed"]), "--no-baseline",
            "--data-dir", data_dir, "--results", str(results), "--no-progress"]
    for name in HPARAM_FLAGS:
        if hp.get(name) is not None:
            args += [flag(name), str(hp[name])]
    args.append("--select-best-epoch" if hp.get("select_best_epoch", True) else "--no-select-best-epoch")
    for name, value in (params.get("objective_params") or {}).items():
        if isinstance(value, bool):
            args.append(flag(name) if value else "--no-" + flag(name)[2:])
        elif value is not None:
            args += [flag(name), str(value)]
    for name in IDENTITY_FLAGS:  # what an identity holds beyond the defaults, replayed as the flag that set it
        if params.get(name) is not None:
            args += [flag(name), str(params[name])]
    precision = (json.loads(row["extra"] or "{}") or {}).get("precision") or params.get("precision") or "fp32"
    return args + ["--mixed-precision", precision, "--force"] + extra  # --force: a reused scratch store retrains


def compare(store: Path, other: Path) -> int:
    """The runs both stores hold, side by side; exit 1 when a shared run's scores differ."""
    mine = {r["run_key"]: r for r in rows_of(store)}
    theirs = {r["run_key"]: r for r in rows_of(other)}
    shared = sorted(set(mine) & set(theirs), key=lambda k: (mine[k]["task"], mine[k]["objective"], mine[k]["seed"]))
    print(f"{len(shared)} run(s) in both {store} and {other}")
    print("| task | objective | init | seed | score here | code here | score there | code there | equal |")
    print("|---|---|---|---:|---:|---|---:|---|---|")
    for k in shared:
        a, b = mine[k], theirs[k]
        print(f"| {a['task']} | {a['objective']} | {a['init']} | {a['seed']} | {100 * a['score']:.2f} | {row_revision(a)} | "
              f"{100 * b['score']:.2f} | {row_revision(b)} | {a['score'] == b['score']} |")
    return 0 if all(mine[k]["score"] == theirs[k]["score"] for k in shared) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--cell", action="append", help="[TASK/]OBJECTIVE@INIT:SEED (e.g. qnli-devsplit/kd@layers:4,8,12:0), or a row's run key")
    ap.add_argument("--data-dir")
    ap.add_argument("--compare", type=Path, help="another store: list the runs both hold, rerunning nothing")
    ap.add_argument("--scratch", type=Path, help="store for the reruns (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.compare:
        return compare(args.store, args.compare)
    if not args.cell or not args.data_dir:
        ap.error("give --cell (one or more) and --data-dir, or --compare OTHER")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="revision-check-")) / "results.sqlite"
    print(f"store {args.store}; reruns in {scratch}")
    print("| cell | seed | stored at | stored | rerun | rerun - stored | cell sd over seeds | same run key |")
    print("|---|---:|---|---:|---:|---:|---:|---|")
    for spec in args.cell:
        by_key = [r for r in rows_of(args.store) if r["run_key"] == spec]  # a run key names one row outright
        task, _, rest = spec.rpartition("/")
        objective, _, rest = rest.partition("@")
        init, _, seed = rest.rpartition(":")
        if by_key:
            task, objective, init, seed = by_key[0]["task"], by_key[0]["objective"], by_key[0]["init"], str(by_key[0]["seed"])
        rows = [r for r in rows_of(args.store, objective, init) if not task or r["task"] == task]
        found = by_key or [r for r in rows if str(r["seed"]) == seed]
        if len(found) != 1 or "processes" in json.loads(found[0]["params"]):
            configs = ", ".join(f"{r['task']} {r['config_hash']}" for r in found) or "none"
            print(f"{spec}: {len(found)} stored rows match (task and config: {configs}); give TASK/OBJECTIVE@INIT:SEED "
                  "naming exactly one single-process row, or its run key", file=sys.stderr)
            return 2
        row = found[0]
        rows = [r for r in rows if r["config_hash"] == row["config_hash"]]  # the cell's seeds, for its spread
        subprocess.run(command(row, args.data_dir, scratch, extra), check=True)
        con = sqlite3.connect(scratch)
        new = con.execute("SELECT run_key, score, extra, git_rev FROM runs WHERE kind = 'student' AND task = ? AND objective = ? "
                          "AND init = ? AND seed = ? ORDER BY created_at DESC",
                          (row["task"], objective, init, int(seed))).fetchone()
        con.close()
        sd = statistics.stdev([r["score"] for r in rows]) if len(rows) > 1 else float("nan")
        fp = row_revision({"extra": new[2], "git_rev": new[3]})
        print(f"| {objective} @ {init} | {seed} | {row_revision(row)} | {100 * row['score']:.2f} | {100 * new[1]:.2f} "
              f"({fp}) | {100 * (new[1] - row['score']):+.2f} | {100 * sd:.2f} | {new[0] == row['run_key']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
