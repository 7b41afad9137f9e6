"""Keep the student: ``--save-students DIR`` writes each run's trained student as a standard transformers folder, and
``distilbench export`` finds a saved one again from its row in the results store.

Layout: ``DIR/<task>/<objective>/<init>/seed<k>-<run_key>/``. The run key alone makes a folder unique; the levels
above it only make a folder of many runs browsable (characters other than letters, digits and ``.,_+-`` become
``_``: ``layers:1,2,3`` -> ``layers_1,2,3``, ``att-kl+0.5*val-kl`` -> ``att-kl+0.5_val-kl``). A folder holds:

* the sequence-classification model (``save_pretrained``), with ``id2label``/``label2id`` from the task's labels,
  and its tokenizer, whose ``model_max_length`` is the run's ``--max-length``, so ``truncation=True`` cuts inputs
  where the run cut them: ``AutoModelForSequenceClassification`` / ``AutoTokenizer.from_pretrained(folder)`` load it
  offline and predict the run's stored dev labels;
* ``README.md``, a model card, and ``distilbench.json``, the same metadata for machines: the command that
  reproduces the run, objective and parameters, teacher, init and layer map, dev scores with the signal check, and
  provenance (git revision, versions, run key).

The card and the JSON are functions of the stored row alone (:func:`metadata`), so ``export`` rewrites them exactly.
A folder is written beside its target and renamed into place: a run killed while saving leaves no folder that
looks complete. Saving is an output option: it never enters the run's identity (``run_key``/``config_hash``).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import UsageError

CARD, META = "README.md", "distilbench.json"
FORMAT = 1
BOOTSTRAP_TEST = ("one-sided paired bootstrap over the dev examples of this run's predictions against the majority-class "
                  "predictor ({samples} resamples, seed {seed}; distilbench.results.chance.example_test). The seed-level "
                  "t-test of `run` and the reports needs more than one seed, so a single student is judged by this test "
                  "alone.")


def _part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.,_+-]", "_", str(text)) or "_"


def student_folder(root: str | Path, row: Mapping) -> Path:
    """Where ``--save-students root`` keeps the student of ``row``."""
    return (Path(root).expanduser() / _part(row["task"]) / _part(row["objective"]) / _part(row["init"])
            / f"seed{int(row['seed'])}-{row['run_key']}")


def run_command(row: Mapping, save_root: str | None = None, extra_args: tuple[str, ...] = ()) -> str:
    """The ``distilbench run`` line that trains exactly this run again (same run key): its cell, its seed alone, and
    the settings it stored as different from the defaults. The data folder is not stored with a row: add
    ``--data-dir`` (or set ``$GLUE_DIR``) where the data is."""
    extra = row.get("extra") or {}
    args = ["distilbench", "run", "--task", str(row["task"]), "--objective", str(row["objective"]),
            "--teacher", str(row["teacher"]), "--init", str(row["init"]), "--seed-list", str(row["seed"])]
    if row["objective"] != "none":
        args.append("--no-baseline")  # the baseline is a run of its own, with its own key
    if extra.get("team"):
        args += ["--teachers", ",".join(extra["team"])]
    for name, value in sorted((extra.get("settings") or {}).items()):
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{name.replace('_', '-')}")
        elif value is not None:
            args += [flag, str(value)]
    if save_root is not None:
        args += ["--save-students", str(save_root)]
    return shlex.join([*args, *extra_args])


def _signal(row: Mapping) -> dict[str, Any]:
    """The signal check of one run: the bootstrap over its dev examples against the majority predictor."""
    from ..results.chance import ALPHA, SAMPLES, SEED, check_rows

    result = check_rows([row])
    if not result.applies:
        verdict = "not applicable"
    elif result.at_chance is None:
        verdict = "not checked"
    else:
        verdict = "at chance" if result.at_chance else "above chance"
    return {"verdict": verdict, "test": BOOTSTRAP_TEST.format(samples=SAMPLES, seed=SEED), "alpha": ALPHA,
            "p": None if result.example_p != result.example_p else round(result.example_p, 6),  # nan -> None
            "majority": None if result.majority != result.majority else round(result.majority, 4),
            "note": result.reason or None}


def metadata(row: Mapping) -> dict[str, Any]:
    """What the model card and ``distilbench.json`` say, from the stored row alone."""
    extra, params = row.get("extra") or {}, row.get("params") or {}
    saved = extra.get("saved_student")
    root = str(Path(saved).parents[3]) if saved else "DIR"  # DIR/<task>/<objective>/<init>/seed<k>-<key>
    metrics = {k: v for k, v in (row.get("metrics") or {}).items() if k != "score"}
    teacher_dev = extra.get("teacher_dev") or {}
    return {
        "format": FORMAT, "run_key": row["run_key"], "config_hash": row.get("config_hash"),
        "command": run_command(row, root),
        "task": row["task"], "task_version": row.get("task_version"), "seed": int(row["seed"]),
        "objective": row["objective"], "objective_version": row.get("objective_version"),
        "objective_params": params.get("objective_params") or {},
        "teacher": row.get("teacher"), "teacher_key": extra.get("teacher_key"), "team": extra.get("team"),
        "student": row.get("student"), "init": row.get("init"),
        "layer_map": (params.get("objective_params") or {}).get("layer_map") or (extra.get("settings") or {}).get("layer_map", "init"),
        "init_mapping": extra.get("layer_mapping") or [],
        "hparams": params.get("hparams") or {}, "settings": extra.get("settings") or {},
        "student_params": extra.get("student_params"), "best_epoch": extra.get("best_epoch"),
        "dev": {"main_score": extra.get("main_score"), "score": row.get("score"), "metrics": metrics,
                "examples": len(extra["dev_labels"]) if extra.get("dev_labels") is not None else None,
                "teacher_score": row.get("teacher_score"), "teacher": teacher_dev or None,
                "fingerprint": params.get("dev")},
        "signal_check": _signal(row),
        "provenance": {"run_key": row["run_key"], "git_rev": row.get("git_rev"), "versions": row.get("versions") or {},
                       "device": extra.get("device")},
        "saved_student": saved,
    }


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.2f}"


def card(meta: Mapping) -> str:
    """The model card (README.md) of a saved student."""
    dev, check, prov = meta["dev"], meta["signal_check"], meta["provenance"]
    teams = f" (team: {', '.join(meta['team'])})" if meta.get("team") else ""
    lines = ["---", "library_name: transformers", "pipeline_tag: text-classification",
             "tags: [distilbench, knowledge-distillation]", "---", "",
             f"# {meta['student']}: {meta['objective']} student of {meta['teacher']} on {meta['task']}, seed {meta['seed']}", "",
             f"A student distilled by distilbench (run `{meta['run_key']}`), saved as a standard transformers folder.", "",
             "```python", "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
             'model = AutoModelForSequenceClassification.from_pretrained("PATH/TO/THIS/FOLDER")',
             'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")  # truncation=True cuts where the run cut',
             "```", "",
             "## Distillation command", "",
             "```bash", meta["command"], "```", "",
             "The data folder is not part of the stored run: add `--data-dir GLUE_DIR` (or set `$GLUE_DIR`). "
             "The same command, with the same data, has the same run key.", "",
             "## Objective, teacher, student", "",
             f"- objective: `{meta['objective']}` v{meta['objective_version']}, parameters: "
             + (", ".join(f"{k}={v}" for k, v in sorted(meta["objective_params"].items())) or "none"),
             f"- teacher: `{meta['teacher']}` (fine-tuned, cache key `{meta['teacher_key']}`){teams}",
             f"- init: `{meta['init']}`; student `{meta['student']}`, {meta['student_params']} parameters",
             f"- layer map: `{meta['layer_map']}`",
             *[f"  - {line}" for line in meta["init_mapping"]],
             "- hyper-parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(meta["hparams"].items())),
             "- settings other than the defaults: " + (", ".join(f"{k}={v}" for k, v in sorted(meta["settings"].items())) or "none"),
             "",
             f"## Dev scores ({meta['task']} dev, {dev['examples']} examples, best epoch {meta['best_epoch']})", "",
             "| metric | student | teacher |", "|---|---|---|",
             *[f"| {k}{' (main)' if k == dev['main_score'] else ''} | {_pct(v)} | {_pct((dev['teacher'] or {}).get(k))} |"
               for k, v in sorted(dev["metrics"].items())],
             "",
             f"**Signal check: {check['verdict']}**"
             + (f" (majority class {check['majority']:.2f}, p = {check['p']:.4f}, α = {check['alpha']})"
                if check["p"] is not None and check["majority"] is not None else "")
             + (f": {check['note']}" if check.get("note") else "") + ".", "",
             f"Test: {check['test']}", "",
             "## Provenance", "",
             f"- run key: `{prov['run_key']}` (config hash `{meta['config_hash']}`)",
             f"- git revision: `{prov['git_rev']}`",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(prov["versions"].items())),
             f"- device: {prov['device']}",
             f"- dev set fingerprint: `{dev['fingerprint']}`", ""]
    return "\n".join(lines)


def write_card(folder: Path, row: Mapping) -> None:
    meta = metadata(row)
    (folder / META).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    (folder / CARD).write_text(card(meta), encoding="utf-8")


def save_student(model, tokenizer, labels: tuple[str, ...] | None, max_length: int, row: dict, root: str | Path) -> str:
    """Write ``row``'s trained student under ``root`` (layout in the module docstring); sets and returns
    ``row['extra']['saved_student']``, the folder's absolute path. A folder already there (``--force``) is replaced."""
    folder = student_folder(root, row).resolve()
    row.setdefault("extra", {})["saved_student"] = str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        config = getattr(model, "module", model).config  # under DDP the model is wrapped
        if labels:  # GLUE's label names: pipelines and readers see "entailment", not LABEL_0
            config.id2label = dict(enumerate(labels))
            config.label2id = {name: i for i, name in enumerate(labels)}
        getattr(model, "module", model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tok_config = tmp / "tokenizer_config.json"
        if tok_config.is_file():  # the tokenizer object is shared with other runs: edit the saved copy only
            values = json.loads(tok_config.read_text(encoding="utf-8"))
            values["model_max_length"] = max_length
            tok_config.write_text(json.dumps(values, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        write_card(tmp, row)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def is_saved(row: Mapping) -> bool:
    saved = (row.get("extra") or {}).get("saved_student")
    return bool(saved) and (Path(saved) / "config.json").is_file()


def note_unsaved(rows: list[dict], log: Callable[[str], None]) -> None:
    """Under --save-students: name the stored runs that were skipped, not trained, and so have no saved student."""
    missing = [r for r in rows if not is_saved(r)]
    if missing:
        log(f"{len(missing)} stored run(s) were not retrained, so their students are not saved "
            f"({', '.join(r['run_key'] for r in missing)}): add --force to retrain and save them")


def export(results: str, key: str, out: str | None = None) -> str:
    """``distilbench export``: the saved student of run ``key``, its card rewritten from the row; copied to ``out``
    when given. Returns the folder. Nothing is trained, and on any refusal nothing is written."""
    from ..plugins import did_you_mean
    from ..results.store import ResultsStore

    if not Path(results).is_file():
        raise UsageError(f"no results file at {results}; pass --results with the store of a `distilbench run`")
    with ResultsStore(results) as store:
        row = store.get(key)
        keys = [] if row is not None else [r["run_key"] for r in store.rows()]
    if row is None:
        hint = did_you_mean(key, keys) or f" It holds {len(keys)} run(s)."
        raise UsageError(f"no run {key!r} in {results}.{hint}")
    saved = (row.get("extra") or {}).get("saved_student")
    if not is_saved(row):
        where = f"its folder {saved} is gone" if saved else "its student was not kept"
        rerun = run_command(row, "DIR", ("--results", str(results), "--force"))
        raise UsageError(f"run {key} was not saved ({where}): rerun it with --save-students DIR and --force: {rerun}")
    source = Path(saved)
    if out is None or Path(out).expanduser().resolve() == source.resolve():
        write_card(source, row)
        return str(source)
    target = Path(out).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"--out {out} exists and is not an empty folder; give a new folder")
    from ..config import check_folder

    check_folder("--out", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        write_card(tmp, row)
        if target.exists():
            target.rmdir()  # empty, checked above
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target.resolve())
