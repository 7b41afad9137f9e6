"""Shared fixtures: the real GLUE data beside the repo, tiny models built from configs, an isolated cache."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py
# one process per run unless a test asks for more: a spawned worker costs seconds of start-up, a tiny run less than one
os.environ.setdefault("DISTILBENCH_WORKERS", "1")
# fp32 unless a test asks for another precision: `auto` would decide per machine (bf16 on one with AMX), and the tests'
# expected values and shared accelerate state assume one precision everywhere, subprocesses included
os.environ.setdefault("DISTILBENCH_MIXED_PRECISION", "fp32")

REPO = Path(__file__).resolve().parents[1]  # the repository root


def pytest_configure(config):
    """A test run stopped by SIGTERM (a CI timeout, `kill`) ends like one interrupted by Ctrl-C: its session fixtures'
    teardown runs, so the PostgreSQL server and the single-node Slurm it started are stopped, not left running."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="regenerate tests/data/golden.json from the code instead of comparing with it (tests/golden.py)")


def pytest_sessionfinish(session, exitstatus):
    if session.config.getoption("--update-golden"):
        import golden

        golden.write()
GLUE = REPO.parent / "shared" / "data" / "glue"


# ------------------------------------------------------------------------------------------------ shared helpers
# plain functions the test modules import (`from conftest import ...`) instead of each keeping a copy


class TrainingStarted(AssertionError):
    pass


def no_training(*args, **kwargs):
    """Patched over ``distilbench.training.runs.runner.train``: a test that must refuse before training fails if it trains."""
    raise TrainingStarted("distilbench.training.runs.runner.train was called")


def read_csv(path: Path) -> list[dict]:
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


RTE_HEADER = "index\tsentence1\tsentence2\tlabel"


def write_rte(root: Path, train_rows: list[str], dev_rows: list[str]) -> Path:
    """A GLUE folder under ``root`` holding only RTE, with these train and dev rows (under RTE's header)."""
    folder = root / "RTE"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("\n".join([RTE_HEADER, *train_rows]) + "\n", encoding="utf-8")
    (folder / "dev.tsv").write_text("\n".join([RTE_HEADER, *dev_rows]) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not GLUE.exists():
        pytest.skip(f"real GLUE data not found at {GLUE} (expected ../shared/data/glue beside the repo)")
    return GLUE


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Teachers and extracted models go to a per-session folder, never the user's cache."""
    old = os.environ.get("DISTILBENCH_CACHE")
    os.environ["DISTILBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("DISTILBENCH_CACHE", None)
    else:
        os.environ["DISTILBENCH_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    from tiny import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert", layers=4, hidden=32, heads=2)


@pytest.fixture
def tiny_run_args(tiny_teacher, glue_dir, tmp_path):
    """CLI arguments for a seconds-long run of a tiny teacher on a slice of real RTE."""
    return ["--teacher", str(tiny_teacher), "--task", "rte", "--data-dir", str(glue_dir), "--max-train-examples", "48",
            "--max-eval-examples", "24", "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "8",
            "--results", str(tmp_path / "results.sqlite"), "--no-progress"]


# ------------------------------------------------------------------------------------------------ PostgreSQL


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return versions[0] if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server on loopback: $DISTILBENCH_TEST_POSTGRES (`.ci/run` starts one), else a throwaway server
    from the installed binaries (Debian's postgresql package), else the test is skipped and says why."""
    url = os.environ.get("DISTILBENCH_TEST_POSTGRES")
    if url:
        yield url
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server: DISTILBENCH_TEST_POSTGRES is unset and initdb/pg_ctl (Debian package "
                    "postgresql) are not installed")
    root = Path(tempfile.mkdtemp(prefix="distilbench-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("no PostgreSQL server: running as root and there is no `postgres` user to start one as")
        shutil.chown(root, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    db = root / "db"
    try:
        subprocess.run([*prefix, initdb, "-D", str(db), "-U", "postgres", "--auth=trust", "-E", "UTF8"], check=True,
                       capture_output=True, timeout=120)
        subprocess.run([*prefix, pg_ctl, "-D", str(db), "-l", str(root / "log"), "-w", "-t", "60", "-o",
                        f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        out = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"no PostgreSQL server: could not start one ({out.decode(errors='replace').strip()[:200] or exc})")
    yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    subprocess.run([*prefix, pg_ctl, "-D", str(db), "-m", "immediate", "stop"], capture_output=True, timeout=60)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_database(postgres_url):
    """A fresh, empty database on the PostgreSQL server for one test (dropped after it): tests never see each
    other's tables."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    name = f"distilbench_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models and tensors: one intra-op thread is several times faster than the default on shared cores (thread
    contention). A test file opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------------ Slurm


@pytest.fixture(scope="session")
def slurm_conf(tmp_path_factory):
    """A single-node Slurm for the tests: $DISTILBENCH_TEST_SLURM_CONF (`.ci/run` starts one), else one started here
    by .ci/slurm-up.sh (root, Debian's slurm-wlm and munge installed), else the test is skipped and says why. Never
    a cluster the user's own SLURM_CONF points at."""
    conf = os.environ.get("DISTILBENCH_TEST_SLURM_CONF")
    started = None
    if not conf:
        missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch") if not shutil.which(b)]
        if missing:
            pytest.skip(f"no Slurm: DISTILBENCH_TEST_SLURM_CONF is unset and {', '.join(missing)} not installed "
                        "(Debian: slurm-wlm, munge)")
        if os.geteuid() != 0:
            pytest.skip("no Slurm: DISTILBENCH_TEST_SLURM_CONF is unset and starting slurmd needs root")
        started = tmp_path_factory.mktemp("slurm")
        up = subprocess.run(["bash", str(REPO / ".ci" / "slurm-up.sh"), str(started)], capture_output=True, text=True,
                            timeout=120)
        if up.returncode != 0:
            pytest.skip(f"no Slurm: .ci/slurm-up.sh could not start one ({up.stderr.strip()[-300:]})")
        conf = up.stdout.strip().split("=", 1)[1]
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    if started is not None:
        subprocess.run(["bash", str(REPO / ".ci" / "slurm-up.sh"), str(started), "stop"], capture_output=True, timeout=60)
