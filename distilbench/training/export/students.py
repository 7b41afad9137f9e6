"""Keep the student: ``--save-students DIR`` writes each run's trained student as a standard transformers folder, and
``distilbench export`` finds a saved one again from its row in the results store. Every task family is saved:
sequence classification (and regression), extractive QA and causal language modelling.

Layout: ``DIR/<task>/<objective>/<init>/seed<k>-<run_key>/``. The run key alone makes a folder unique; the levels
above it only make a folder of many runs browsable (characters other than letters, digits and ``.,_+-`` become
``_``: ``layers:1,2,3`` -> ``layers_1,2,3``, ``att-kl+0.5*val-kl`` -> ``att-kl+0.5_val-kl``). A folder holds:

* the model (``save_pretrained``) and its tokenizer, per the task's family (:data:`FAMILIES`):

  - sequence classification: ``AutoModelForSequenceClassification``, with ``id2label``/``label2id`` from the task's
    labels; the tokenizer's ``model_max_length`` is the run's ``--max-length``, so ``truncation=True`` cuts inputs
    where the run cut them, and the folder predicts the run's stored dev labels;
  - extractive QA: ``AutoModelForQuestionAnswering`` (start/end scores per token); ``model_max_length`` is the run's
    window length (:func:`distilbench.data.qa.window_settings`), and the folder's windows scored by the
    harness give the run's stored per-question F1;
  - causal LM: ``AutoModelForCausalLM`` with the run's tokenizer (a from-scratch teacher's byte-level BPE, its pad
    token set to its end-of-text token); ``model_max_length`` is the run's block length (``--max-length``), and the
    folder's dev perplexity is the run's score;

  all load offline with ``AutoModelFor...`` / ``AutoTokenizer.from_pretrained(folder)``;
* ``README.md``, a model card, and ``distilbench.json``, the same metadata for machines: the command that
  reproduces the run, objective and parameters, teacher, init and layer map, dev scores (classification and QA
  metrics × 100, perplexity in its own units, lower is better) with the signal check (a single run's bootstrap
  against the majority class, or QA's question-blind floor; an LM's check is against the ``none`` student and needs
  the cells, so the card says it does not apply to one run), and provenance (git revision, versions, run key).

The card and the JSON are functions of the stored row and the task registry alone (:func:`metadata`), so ``export``
rewrites them exactly. A folder is written beside its target and renamed into place: a run killed while saving leaves
no folder that looks complete. Saving is an output option: it never enters the run's identity
(``run_key``/``config_hash``).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping

from ...config import RunConfig, check_folder
from ...data.lm_text import evaluation_text
from ...data.qa import window_settings
from ...data.tasks import get_task
from ...errors import UsageError
from ...models.encoders import STUDENT_META
from ...plugins import did_you_mean
from ...results.chance import ALPHA, SAMPLES, SEED, check_rows
from ...results.store import ResultsStore

CARD, META = "README.md", STUDENT_META
FORMAT = 1
CLASSIFICATION, QA, LM = "sequence-classification", "extractive-qa", "causal-lm"
# family -> (the model card's pipeline_tag, the transformers class that loads the folder)
FAMILIES = {CLASSIFICATION: ("text-classification", "AutoModelForSequenceClassification"),
            QA: ("question-answering", "AutoModelForQuestionAnswering"),
            LM: ("text-generation", "AutoModelForCausalLM")}
BOOTSTRAP_TEST = ("one-sided paired bootstrap over the dev examples of this run's predictions against the majority-class "
                  "predictor ({samples} resamples, seed {seed}; distilbench.results.chance.example_test). The seed-level "
                  "t-test of `run` and the reports needs more than one seed, so a single student is judged by this test "
                  "alone.")
QA_BOOTSTRAP_TEST = ("one-sided paired bootstrap over the dev questions of this run's per-question F1 against the "
                     "question-blind floor's (the better on dev of the empty answer and the context's first sentence, "
                     "predictors that never read the question; {samples} resamples, seed {seed}; "
                     "distilbench.results.chance.example_test). The seed-level t-test of `run` and the reports needs "
                     "more than one seed, so a single student is judged by this test alone.")
LM_TEST = ("against the `none` student of the same init and seeds (distilbench.results.lm_signal): one-sided, a paired "
           "t-test of perplexity over seeds and a paired bootstrap of the per-window mean NLL over the dev windows.")
LM_NOTE = ("a causal LM has no majority class: it is checked against the `none` student, comparing this objective's "
           "cell with the `none` cell (2 or more seeds each), which `distilbench run` and the reports show")


def _part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.,_+-]", "_", str(text)) or "_"


def student_folder(root: str | Path, row: Mapping) -> Path:
    """Where ``--save-students root`` keeps the student of ``row``."""
    return (Path(root).expanduser() / _part(row["task"]) / _part(row["objective"]) / _part(row["init"])
            / f"seed{int(row['seed'])}-{row['run_key']}")


def run_command(row: Mapping, save_root: str | None = None, extra_args: tuple[str, ...] = ()) -> str:
    """The ``distilbench run`` line that trains exactly this run again (same run key): its cell, its seed alone, and
    the settings it stored as different from the defaults. The data folder is not stored with a row: add
    ``--data-dir`` (the folder that holds the task's folder: ``RTE/``, ``squad-v1.1/``, ``wikitext-2-tokens/``; or
    set ``$GLUE_DIR``) where the data is."""
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


def family(row: Mapping) -> str:
    """The task family of ``row`` (:data:`FAMILIES`) from the task registry; for a task no longer registered, from
    what the row stored (``extra.lm`` for a causal LM, per-question F1 for extractive QA)."""
    try:
        return get_task(str(row["task"])).family
    except UsageError:
        extra = row.get("extra") or {}
        return LM if extra.get("lm") else QA if extra.get("per_example") == "f1" else CLASSIFICATION


def _data_folder(row: Mapping) -> str | None:
    """The task's folder inside ``--data-dir`` (``RTE``, ``squad-v1.1``, ``wikitext-2-tokens``); None if unknown."""
    try:
        task = get_task(str(row["task"]))
    except UsageError:
        return None
    return getattr(task, "folder", None) or getattr(task, "glue_dir", None)


def _token_length(row: Mapping, kind: str) -> dict[str, Any]:
    """The tokenizer's ``model_max_length`` (what the run cut at) and, for QA, its windows' stride, from the row."""
    max_length = ((row.get("extra") or {}).get("settings") or {}).get("max_length", RunConfig.max_length)
    if kind == QA:
        try:
            length, stride, question = window_settings(SimpleNamespace(max_length=max_length), get_task(str(row["task"])))
        except UsageError:
            return {"model_max_length": None}
        return {"model_max_length": length, "doc_stride": stride, "max_question_length": question}
    return {"model_max_length": max_length}


def _signal(row: Mapping, kind: str) -> dict[str, Any]:
    """The signal check of one run: the bootstrap over its dev examples against the majority predictor (extractive
    QA: against the question-blind floor); for a causal LM, why one run is not checked."""
    if kind == LM:
        return {"verdict": "not applicable", "test": LM_TEST, "alpha": ALPHA, "p": None, "majority": None,
                "floor": "the `none` student", "note": LM_NOTE}
    result = check_rows([row])
    if not result.applies:
        verdict = "not applicable"
    elif result.at_chance is None:
        verdict = "not checked"
    else:
        verdict = "at chance" if result.at_chance else "above chance"
    test = QA_BOOTSTRAP_TEST if kind == QA else BOOTSTRAP_TEST
    return {"verdict": verdict, "test": test.format(samples=SAMPLES, seed=SEED), "alpha": ALPHA,
            "p": None if result.example_p != result.example_p else round(result.example_p, 6),  # nan -> None
            "majority": None if result.majority != result.majority else round(result.majority, 4),
            "floor": result.floor, "note": result.reason or None}


def metadata(row: Mapping) -> dict[str, Any]:
    """What the model card and ``distilbench.json`` say, from the stored row (and the task registry) alone."""
    extra, params = row.get("extra") or {}, row.get("params") or {}
    saved = extra.get("saved_student")
    root = str(Path(saved).parents[3]) if saved else "DIR"  # DIR/<task>/<objective>/<init>/seed<k>-<key>
    metrics = {k: v for k, v in (row.get("metrics") or {}).items() if k != "score"}
    teacher_dev = extra.get("teacher_dev") or {}
    kind = family(row)
    pipeline_tag, auto_class = FAMILIES.get(kind, FAMILIES[CLASSIFICATION])
    lm = extra.get("lm") or {}
    dev = {"main_score": extra.get("main_score"), "score": row.get("score"), "metrics": metrics,
           "examples": len(extra["dev_labels"]) if extra.get("dev_labels") is not None else None,
           "teacher_score": row.get("teacher_score"), "teacher": teacher_dev or None,
           "fingerprint": params.get("dev"),
           "scale": 1 if kind == LM else 100,  # how the card shows the scores: perplexity in its own units
           "higher_is_better": not (kind == LM or lm.get("higher_is_better") is False)}
    if kind == LM:  # the dev "examples" are evaluation windows
        dev.update({"examples": None, "windows": lm.get("windows"), "tokens": lm.get("tokens"),
                    "eval_max_length": lm.get("eval_max_length"), "eval_stride": lm.get("eval_stride")})
    return {
        "format": FORMAT, "run_key": row["run_key"], "config_hash": row.get("config_hash"),
        "command": run_command(row, root),
        "task": row["task"], "task_version": row.get("task_version"), "seed": int(row["seed"]),
        "family": kind, "pipeline_tag": pipeline_tag, "auto_class": auto_class, "data_folder": _data_folder(row),
        "tokenizer": {**_token_length(row, kind),
                      **({"from_scratch_bpe": bool(lm.get("from_scratch_teacher"))} if kind == LM else {})},
        "objective": row["objective"], "objective_version": row.get("objective_version"),
        "objective_params": params.get("objective_params") or {},
        "teacher": row.get("teacher"), "teacher_key": extra.get("teacher_key"), "team": extra.get("team"),
        "teacher_note": lm.get("teacher_note"),
        "student": row.get("student"), "init": row.get("init"),
        "layer_map": (params.get("objective_params") or {}).get("layer_map") or (extra.get("settings") or {}).get("layer_map", "init"),
        "init_mapping": extra.get("layer_mapping") or [],
        "hparams": params.get("hparams") or {}, "settings": extra.get("settings") or {},
        "student_params": extra.get("student_params"), "best_epoch": extra.get("best_epoch"),
        "dev": dev,
        "signal_check": _signal(row, kind),
        "provenance": {"run_key": row["run_key"], "git_rev": row.get("git_rev"), "versions": row.get("versions") or {},
                       "device": extra.get("device")},
        "saved_student": saved,
    }


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.2f}"


def _value(name: str, x: Any, scale: int) -> str:
    """One dev metric as the card shows it: a fraction × 100 (classification, QA), perplexity and NLL in their own
    units (causal LM); counts and thresholds (SQuAD v2.0's ``total``, ``best_f1_thresh``) as they are."""
    if x is None:
        return "n/a"
    if name.endswith("total"):
        return f"{float(x):.0f}"
    if name.endswith("_thresh") or (scale == 1 and name == "nll"):
        return f"{float(x):.4f}"
    return f"{float(x):.2f}" if scale == 1 else _pct(x)


LM_TABLE = ("perplexity", "nll")  # the LM metrics the table shows; tokens and windows go in its heading


def _score_lines(meta: Mapping) -> list[str]:
    """The card's dev-score section: heading, table."""
    dev, kind = meta["dev"], meta["family"]
    teacher = dev["teacher"] or {}
    if kind == LM:
        heading = f"## Dev scores ({meta['task']} dev, {dev['windows']} windows, best epoch {meta['best_epoch']})"
        described = evaluation_text(dev)  # the same words as `run`'s summary and the report
        note = (f"{described[0].upper()}{described[1:]}. Perplexity is in its own units: **lower is better**; NLL in "
                "nats per token.")
        names = [k for k in LM_TABLE if k in dev["metrics"]]
    else:
        unit = "questions" if kind == QA else "examples"
        heading = f"## Dev scores ({meta['task']} dev, {dev['examples']} {unit}, best epoch {meta['best_epoch']})"
        note = "Scores × 100 (higher is better)" + ("; F1 and exact match per SQuAD's rules." if kind == QA else ".")
        names = sorted(dev["metrics"])
    rows = [f"| {k}{' (main)' if k == dev['main_score'] else ''} | {_value(k, dev['metrics'][k], dev['scale'])} | "
            f"{_value(k, teacher.get(k), dev['scale'])} |" for k in names]
    return [heading, "", note, "", "| metric | student | teacher |", "|---|---|---|", *rows]


def _signal_line(check: Mapping) -> str:
    if check["verdict"] == "not applicable" and check.get("floor") == "the `none` student":
        return f"**Signal check: not applicable to a single run**: {check['note']}."
    return (f"**Signal check: {check['verdict']}**"
            + (f" ({check.get('floor') or 'majority class'} {check['majority']:.2f}, p = {check['p']:.4f}, "
               f"α = {check['alpha']})" if check["p"] is not None and check["majority"] is not None else "")
            + (f": {check['note']}" if check.get("note") else "") + ".")


def _loader_lines(meta: Mapping) -> list[str]:
    auto, tok, kind = meta["auto_class"], meta["tokenizer"], meta["family"]
    if kind == QA:
        comment = (f"model_max_length = the run's window length ({tok.get('model_max_length')} tokens; its windows "
                   f"overlapped by doc_stride {tok.get('doc_stride')})")
    elif kind == LM:
        bpe = "the from-scratch teacher's byte-level BPE, " if tok.get("from_scratch_bpe") else ""
        comment = f"{bpe}model_max_length = the run's block length ({tok.get('model_max_length')} tokens)"
    else:
        comment = "truncation=True cuts where the run cut"
    return ["```python", f"from transformers import {auto}, AutoTokenizer", "",
            f'model = {auto}.from_pretrained("PATH/TO/THIS/FOLDER")',
            f'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")  # {comment}',
            "```"]


def card(meta: Mapping) -> str:
    """The model card (README.md) of a saved student."""
    dev, check, prov = meta["dev"], meta["signal_check"], meta["provenance"]
    teams = f" (team: {', '.join(meta['team'])})" if meta.get("team") else ""
    folder = meta.get("data_folder")
    data_hint = (f"add `--data-dir DATA_DIR`, the folder that holds `{folder}/` (or set `$GLUE_DIR` to it)" if folder
                 else "add `--data-dir DATA_DIR`, the folder that holds the task's data (or set `$GLUE_DIR` to it)")
    teacher_kind = "trained from scratch" if meta.get("teacher_note") else "fine-tuned"
    lines = ["---", "library_name: transformers", f"pipeline_tag: {meta['pipeline_tag']}",
             "tags: [distilbench, knowledge-distillation]", "---", "",
             f"# {meta['student']}: {meta['objective']} student of {meta['teacher']} on {meta['task']}, seed {meta['seed']}", "",
             f"A student distilled by distilbench (run `{meta['run_key']}`), saved as a standard transformers folder.", "",
             *_loader_lines(meta), "",
             "## Distillation command", "",
             "```bash", meta["command"], "```", "",
             f"The data folder is not part of the stored run: {data_hint}; without either the task's data is read "
             "from the hub. The same command, with the same data, has the same run key.", "",
             "## Objective, teacher, student", "",
             f"- objective: `{meta['objective']}` v{meta['objective_version']}, parameters: "
             + (", ".join(f"{k}={v}" for k, v in sorted(meta["objective_params"].items())) or "none"),
             f"- teacher: `{meta['teacher']}` ({teacher_kind}, cache key `{meta['teacher_key']}`){teams}",
             *([f"  - {meta['teacher_note']}"] if meta.get("teacher_note") else []),
             f"- init: `{meta['init']}`; student `{meta['student']}`, {meta['student_params']} parameters",
             f"- layer map: `{meta['layer_map']}`",
             *[f"  - {line}" for line in meta["init_mapping"]],
             "- hyper-parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(meta["hparams"].items())),
             "- settings other than the defaults: " + (", ".join(f"{k}={v}" for k, v in sorted(meta["settings"].items())) or "none"),
             "",
             *_score_lines(meta),
             "",
             _signal_line(check), "",
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
