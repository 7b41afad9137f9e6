"""GLUE task registry and loaders, checked against the real GLUE files and hand-made broken ones."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import yaml

from distilbench.errors import DataError, UsageError
from distilbench.data.tasks import TASKS, Example, Task, _task_dir, get_task, load_split, resolve_data_dir
from distilbench.data.tsv import tsv_lines

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason=f"real GLUE data not found at {GLUE} (../shared/data/glue)")

ALL = {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli-mm", "qnli", "rte", "wnli", "qnli-devsplit",
       "squad", "squad_v2", "squad-devsplit",  # extractive QA (tests/test_qa_tasks.py)
       "wikitext2", "wikitext103", "openwebtext"}  # causal LM (tests/test_lm.py; wikitext103 and openwebtext: the
# paper scale of ted-table1)


# --------------------------------------------------------------------------- registry


def test_registry_has_every_glue_task_with_canonical_labels() -> None:
    assert set(TASKS.names()) == ALL
    assert get_task("rte").labels == ("entailment", "not_entailment")
    assert get_task("qnli").labels == ("entailment", "not_entailment")
    assert get_task("mnli").labels == ("entailment", "neutral", "contradiction")
    assert get_task("mrpc").labels == ("not_equivalent", "equivalent")
    assert get_task("wnli").labels == ("not_entailment", "entailment")
    assert get_task("cola").metrics == ("mcc",) and get_task("cola").main_score == "mcc"
    assert get_task("qqp").metrics == ("accuracy", "f1") and get_task("qqp").main_score == "combined"
    stsb = get_task("stsb")
    assert stsb.regression and stsb.labels is None and stsb.num_labels == 1
    assert stsb.metrics == ("pearson", "spearman") and stsb.main_score == "combined"
    assert get_task("mnli").num_labels == 3 and get_task("rte").num_labels == 2


def test_mnli_matched_and_mismatched_share_train() -> None:
    m, mm = get_task("mnli"), get_task("mnli-mm")
    assert (m.glue_dir, m.files["train"]) == (mm.glue_dir, mm.files["train"]) == ("MNLI", "train.tsv")
    assert (m.files["dev"], mm.files["dev"]) == ("dev_matched.tsv", "dev_mismatched.tsv")
    assert (m.hub_splits["dev"], mm.hub_splits["dev"]) == ("validation_matched", "validation_mismatched")
    assert (m.hub_path, m.hub_config) == ("nyu-mll/glue", "mnli")


def test_yaml_files_are_plain_data() -> None:
    entries = [e for e in _task_dir().iterdir() if e.name.endswith(".yaml")]
    assert len(entries) == len(ALL)
    for entry in entries:
        spec = yaml.safe_load(entry.read_text(encoding="utf-8"))  # safe_load refuses object tags
        assert entry.name == f"{spec['name']}.yaml"
        if spec.get("family") == "causal-lm":  # a corpus scored by perplexity: lower is better
            assert isinstance(spec["version"], str) and spec["higher_is_better"] is False
            assert spec["main_score"] == "perplexity"
            assert spec["hub"] is None if spec["name"] == "openwebtext" else spec["hub"]["path"] == "Salesforce/wikitext"
            continue
        assert isinstance(spec["version"], str) and spec["higher_is_better"] is True
        qa = spec.get("family") == "extractive-qa"
        assert spec["hub"]["path"] == ("rajpurkar/squad_v2" if spec["name"] == "squad_v2" else "rajpurkar/squad" if qa
                                       else "nyu-mll/glue")


def test_get_task_is_case_insensitive_and_knows_aliases() -> None:
    assert get_task("RTE") is get_task("rte")
    assert get_task("SST-2") is get_task("sst2")
    hash(get_task("rte"))  # usable as a dict key despite its dict fields


def test_unknown_task_suggests_the_closest() -> None:
    with pytest.raises(UsageError) as err:
        get_task("rtee")
    msg = str(err.value)
    assert "did you mean" in msg.lower() and "'rte'" in msg and "Accepted:" in msg


def test_majority_score() -> None:
    assert get_task("rte").majority_score([0, 1, 1, 1]) == pytest.approx(0.75)
    # MRPC: always "equivalent" on 3 of 4 positives -> acc 0.75, f1 6/7, combined = their mean
    assert get_task("mrpc").majority_score([1, 1, 0, 1]) == pytest.approx((0.75 + 6 / 7) / 2)
    assert get_task("cola").majority_score([1, 1, 0]) == 0.0  # constant prediction: mcc 0
    assert get_task("stsb").majority_score([1.0, 2.0]) is None


# --------------------------------------------------------------------------- resolve_data_dir


def test_resolve_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flag, env = tmp_path / "flag", tmp_path / "env"
    flag.mkdir(), env.mkdir()
    monkeypatch.delenv("GLUE_DIR", raising=False)
    assert resolve_data_dir(None) is None
    monkeypatch.setenv("GLUE_DIR", str(env))
    assert resolve_data_dir(None) == env.resolve()
    assert resolve_data_dir(str(flag)) == flag.resolve()


def test_resolve_data_dir_refuses_missing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLUE_DIR", raising=False)
    with pytest.raises(UsageError, match=r"data folder .*nowhere does not exist; pass --data-dir .*GLUE_DIR"):
        resolve_data_dir(str(tmp_path / "nowhere"))
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "gone"))
    with pytest.raises(UsageError, match="gone does not exist"):
        resolve_data_dir(None)


# --------------------------------------------------------------------------- real GLUE files


@needs_glue
@pytest.mark.parametrize(
    "task,split,count",
    [
        ("cola", "train", 8551), ("cola", "dev", 1043), ("sst2", "dev", 872), ("mrpc", "train", 3668),
        ("mrpc", "dev", 408), ("stsb", "train", 5749), ("stsb", "dev", 1500), ("rte", "train", 2490),
        ("rte", "dev", 277), ("wnli", "train", 635), ("wnli", "dev", 71), ("qnli", "dev", 5463),
    ],
)
def test_real_row_counts(task: str, split: str, count: int) -> None:
    examples = load_split(get_task(task), split, GLUE)
    assert len(examples) == count
    assert [e.idx for e in examples[:3]] == [0, 1, 2] and examples[-1].idx == count - 1


@needs_glue
def test_real_first_rows() -> None:
    rte = load_split(get_task("rte"), "dev", GLUE)[0]
    assert rte.text_a.startswith("Dana Reeve, the widow of the actor Christopher Reeve")
    assert rte.text_b == "Christopher Reeve had an accident." and rte.label == 1  # not_entailment
    qnli = load_split(get_task("qnli"), "dev", GLUE)[:2]
    assert qnli[0].text_a == "What came into force after the new constitution was herald?"
    assert [e.label for e in qnli] == [0, 1]  # entailment, not_entailment
    sst = load_split(get_task("sst2"), "dev", GLUE)[:2]
    assert sst[0] == Example(0, "it 's a charming and often affecting journey . ", None, 1)
    assert sst[1].label == 0
    wnli = load_split(get_task("wnli"), "dev", GLUE)[:2]
    assert wnli[0].text_b == "The hair has to be cleaned." and [e.label for e in wnli] == [0, 1]


@needs_glue
def test_cola_has_no_header() -> None:
    train = load_split(get_task("cola"), "train", GLUE)
    # the very first line of the file is a data row, not a header
    assert train[0] == Example(0, "Our friends won't buy this analysis, let alone the next one we propose.", None, 1)
    dev = load_split(get_task("cola"), "dev", GLUE)  # its last line has no final newline and still counts
    assert dev[0].text_a == "The sailors rode the breeze clear of the rocks."
    assert {e.label for e in dev} == {0, 1} and sum(e.label == 0 for e in dev) == 322


@needs_glue
def test_mrpc_bom_and_quotes() -> None:
    assert (GLUE / "MRPC" / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbfQuality\t")
    assert tsv_lines(GLUE / "MRPC" / "train.tsv")[0].split("\t")[0] == "Quality"  # BOM gone
    first = load_split(get_task("mrpc"), "train", GLUE)[0]
    assert first.text_a == 'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .'
    assert first.text_b.startswith('Referring to him as only " the witness " ,') and first.label == 1
    dev = load_split(get_task("mrpc"), "dev", GLUE)
    assert dev[0].text_b == '" The foodservice pie business does not fit our long-term growth strategy .'
    assert dev[1].label == 0


@needs_glue
def test_stsb_floats_and_quotes() -> None:
    dev = load_split(get_task("stsb"), "dev", GLUE)
    assert dev[0] == Example(0, "A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)
    assert dev[1].label == pytest.approx(4.75) and isinstance(dev[1].label, float)
    assert dev[267].text_b == 'a woman is standing by a pillar where "u2" is written.'
    assert dev[267].label == pytest.approx(4.2)
    assert all(0.0 <= e.label <= 5.0 for e in dev)


@needs_glue
def test_real_majority_baselines() -> None:
    rte = get_task("rte")
    assert rte.majority_score([e.label for e in load_split(rte, "dev", GLUE)]) == pytest.approx(146 / 277)


@needs_glue
def test_missing_split_or_task_folder_names_the_path() -> None:
    with pytest.raises(DataError, match=r"QNLI/train\.tsv does not exist"):
        load_split(get_task("qnli"), "train", GLUE)
    with pytest.raises(DataError, match=r"glue/MNLI does not exist.*dev_matched\.tsv"):
        load_split(get_task("mnli"), "dev", GLUE)


# --------------------------------------------------------------------------- broken files


def _write(root: Path, folder: str, name: str, text: str) -> Path:
    (root / folder).mkdir(parents=True, exist_ok=True)
    path = root / folder / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


RTE_HEAD = "index\tsentence1\tsentence2\tlabel\n"


def test_wrong_column_count_reports_line(tmp_path: Path) -> None:
    _write(tmp_path, "RTE", "dev.tsv", RTE_HEAD + "0\ta\tb\tentailment\n1\ta\tnot_entailment\n")
    with pytest.raises(DataError, match=r"dev\.tsv:3: found 3 tab-separated columns, expected 4") as err:
        load_split(get_task("rte"), "dev", tmp_path)
    assert "\n" not in str(err.value)


def test_empty_and_unknown_labels(tmp_path: Path) -> None:
    _write(tmp_path, "RTE", "dev.tsv", RTE_HEAD + "0\ta\tb\t\n")
    with pytest.raises(DataError, match=r"dev\.tsv:2: empty label"):
        load_split(get_task("rte"), "dev", tmp_path)
    _write(tmp_path, "RTE", "dev.tsv", RTE_HEAD + "0\ta\tb\tentailment\n1\ta\tb\tmaybe\n")
    with pytest.raises(DataError, match=r"dev\.tsv:3: label 'maybe'.*accepted: entailment, not_entailment"):
        load_split(get_task("rte"), "dev", tmp_path)
    _write(tmp_path, "STS-B", "dev.tsv", "sentence1\tsentence2\tscore\nx\ty\t7.5\n")
    with pytest.raises(DataError, match=r"dev\.tsv:2: score '7\.5' outside accepted range"):
        load_split(get_task("stsb"), "dev", tmp_path)
    _write(tmp_path, "CoLA", "train.tsv", "gj04\t1\t\tGood.\ngj04\t2\t*\tBad.\n")
    with pytest.raises(DataError, match=r"train\.tsv:2: label '2'.*accepted: 0, 1"):
        load_split(get_task("cola"), "train", tmp_path)


def test_missing_header_column(tmp_path: Path) -> None:
    _write(tmp_path, "RTE", "train.tsv", "index\tpremise\tsentence2\tlabel\n")
    with pytest.raises(DataError, match=r"train\.tsv:1: header has no column.*'sentence1'"):
        load_split(get_task("rte"), "train", tmp_path)


def test_quotes_are_ordinary_and_crlf_is_stripped(tmp_path: Path) -> None:
    text = RTE_HEAD + '0\t" unbalanced\tb\tentailment\r\n1\tc\t"d"\tnot_entailment\r\n'
    _write(tmp_path, "RTE", "dev.tsv", text)
    rows = load_split(get_task("rte"), "dev", tmp_path)
    assert [(e.text_a, e.text_b, e.label) for e in rows] == [('" unbalanced', "b", 0), ("c", '"d"', 1)]


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown split 'test'"):
        load_split(get_task("rte"), "test", tmp_path)


# --------------------------------------------------------------------------- hub path (faked: no network)


def _fake_datasets(monkeypatch: pytest.MonkeyPatch, load) -> list:
    calls: list = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return load()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_hub_failure_becomes_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline():
        raise ConnectionError("no route to host")

    _fake_datasets(monkeypatch, offline)
    with pytest.raises(DataError, match=r"could not load nyu-mll/glue/rte .*offline.*--data-dir"):
        load_split(get_task("rte"), "dev", None)


def test_hub_rows_are_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"premise": "p0", "hypothesis": "h0", "label": 2, "idx": 0}, {"premise": "p1", "hypothesis": "h1", "label": 0, "idx": 1}]
    calls = _fake_datasets(monkeypatch, lambda: rows)
    out = load_split(get_task("mnli-mm"), "dev", None)
    assert calls == [(("nyu-mll/glue", "mnli"), {"split": "validation_mismatched"})]
    assert out == [Example(0, "p0", "h0", 2), Example(1, "p1", "h1", 0)]
    _fake_datasets(monkeypatch, lambda: [{"premise": "p", "hypothesis": "h", "label": -1}])
    with pytest.raises(DataError, match="label -1 is not a class id"):
        load_split(get_task("mnli"), "dev", None)


def test_task_is_frozen() -> None:
    with pytest.raises(AttributeError):
        get_task("rte").name = "x"  # type: ignore[misc]
    assert isinstance(get_task("rte"), Task)


def test_qnli_devsplit_is_a_fixed_disjoint_split_of_qnli_dev(glue_dir):
    """Both splits come from GLUE QNLI dev (no train split offline): 2,000 test rows, the rest train, disjoint, the
    same every time, and the task says where its data comes from."""
    from distilbench.data.tasks import get_task, load_split

    task, qnli = get_task("qnli-devsplit"), get_task("qnli")
    dev = load_split(qnli, "dev", glue_dir)
    train, test = load_split(task, "train", glue_dir), load_split(task, "dev", glue_dir)
    assert (len(train), len(test)) == (3463, 2000) and len(train) + len(test) == len(dev)
    key = lambda e: (e.text_a, e.text_b, e.label)  # noqa: E731
    assert sorted(map(key, train + test)) == sorted(map(key, dev))  # a partition of QNLI dev, nothing else
    assert not set(map(key, train)) & set(map(key, test))
    assert [e.idx for e in test] == list(range(2000))
    assert load_split(task, "dev", glue_dir) == test  # fixed seed: the same split every time
    assert "NOT GLUE QNLI" in task.provenance and get_task("qnli-dev-split") is task
    assert task.majority_score([e.label for e in test]) == 0.508
