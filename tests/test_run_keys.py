"""Run identities of the committed stores are unchanged by the code that computes them: every row's stored settings,
read back through today's RunConfig and objective registry, give the objective parameters and hyper-parameters
its identity holds, and that identity hashes to the row's run key. A renamed option, a changed default or an option
moved between the run fields and an objective's own would fail here (and would orphan every stored row)."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from distilbench.config import RunConfig, option_names
from distilbench.hashing import run_key
from distilbench.objectives import get_objective

REPO = Path(__file__).resolve().parents[1]
STORES = sorted(REPO.glob("reports/*/results.sqlite"))
HPARAMS = ("epochs", "lr", "batch_size", "max_length", "warmup_ratio", "weight_decay", "max_grad_norm",
           "selection_fraction", "select_best_epoch", "max_train_examples")


# deliberate changes of a default, with the stores whose rows ran at the old one (their cells no longer match the
# suite: the report says so): (store, objective, parameter) -> (stored value, today's default)
CHANGED_DEFAULTS = {("ted-table1", "ted", "beta"): (100.0, 0.1)}  # TED's causal-LM alpha_2 became the paper's 0.1


def _rows(store: Path) -> list[dict]:
    con = sqlite3.connect(f"file:{store}?mode=ro&immutable=1", uri=True)  # committed: no WAL side files left behind
    try:
        cols = [c[1] for c in con.execute("pragma table_info(runs)")]
        return [dict(zip(cols, r)) for r in con.execute("select * from runs where kind is null or kind != 'teacher'")]
    finally:
        con.close()


def test_there_are_committed_stores():
    assert len(STORES) >= 10


@pytest.mark.parametrize("store", STORES, ids=lambda p: p.parent.name)
def test_committed_run_keys_are_what_todays_code_computes(store):
    checked = 0
    for row in _rows(store):
        identity = json.loads(row["params"])
        assert run_key(identity) == row["run_key"]  # the hash of a stored identity
        settings = json.loads(row["extra"] or "{}").get("settings")
        if settings is None:  # stored before rows kept their settings: nothing to rebuild the config from
            continue
        values = {k: v for k, v in settings.items() if k in option_names()}
        if "teachers" in identity["objective_params"]:  # the team is a cell's, never a setting
            values["teachers"] = identity["objective_params"]["teachers"]
        cfg = RunConfig(task=row["task"], objective=row["objective"], **values)
        objective = get_objective(row["objective"])
        computed = objective.param_values(cfg)
        for (name, obj, param), (old, new) in CHANGED_DEFAULTS.items():
            if name == store.parent.name and obj == row["objective"] and param not in settings:
                assert (identity["objective_params"][param], computed[param]) == (old, new)
                computed[param] = old
        assert computed == identity["objective_params"], (row["objective"], settings)
        assert {k: getattr(cfg, k) for k in HPARAMS} == identity["hparams"]
        checked += 1
    assert checked > 0 or store.parent.name == "autoskd-mrpc", f"{store}: no row was rebuilt"
