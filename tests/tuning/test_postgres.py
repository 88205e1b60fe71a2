"""Tuning on a real PostgreSQL server, as on several machines: the storage's one-line errors (permanent ones
said at once, not retried; the password masked wherever the URL holds it), workers that create a fresh study
at the same moment, and a worker killed mid-trial whose trial the heartbeat fails and
a second worker runs again.

The ``postgres`` fixture starts a throwaway server on 127.0.0.1 (binaries of Debian's ``postgresql``
package under /usr/lib/postgresql/*/bin, which ``.ci/run`` installs when missing) in a temporary folder, and
stops it afterwards. In CI a server that does not start fails the tests; elsewhere they are skipped when the
binaries are missing.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from smallct import cli
from smallct.config.studies import TuneConfig
from smallct.datasets.phantom import write_phantom_png_set
from smallct.tuning.storage import create_or_load, make_storage, masked

try:  # the driver of postgresql:// URLs: the postgres extra, and the dev extra CI installs
    import psycopg
except ImportError:
    psycopg = None

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "smallct", "s3cret-pw"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A PostgreSQL server of its own in ``root`` (data, socket and log), on 127.0.0.1:``port``.

    As root, its programs run as the ``postgres`` user (``initdb`` and ``pg_ctl`` refuse root), so ``root`` is
    handed to that user."""

    def __init__(self, bin_dir: Path, root: Path):
        self.bin, self.root, self.port = bin_dir, root, _free_port()
        self.data, self.socket_dir, self.log = root / "data", root / "socket", root / "server.log"

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        env = {**os.environ, "PGPASSWORD": PASSWORD, "LC_ALL": "C"}
        return subprocess.run([*as_postgres, str(self.bin / cmd[0]), *cmd[1:]], env=env, capture_output=True,
                              text=True, timeout=120, cwd=self.root)

    def _check(self, done: subprocess.CompletedProcess) -> None:
        if done.returncode != 0:
            log = self.log.read_text() if self.log.is_file() else ""
            raise RuntimeError(f"{' '.join(done.args)} exited {done.returncode}: {done.stdout}{done.stderr}{log}")

    def start(self) -> None:
        self.socket_dir.mkdir(parents=True)
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            for path in (self.socket_dir, pwfile):
                shutil.chown(path, "postgres", "postgres")
        # password logins only, so that a wrong password is refused as on a lab's server
        self._check(self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=scram-sha-256",
                              f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions"))
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c synchronous_commit=off -c max_connections=50")
        self._check(self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60",
                              "start"))

    def stop(self) -> None:
        if self.data.is_dir():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def createdb(self, name: str) -> str:
        """A new, empty database; its URL."""
        self._check(self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name))
        return self.url(name)

    def url(self, name: str, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="module")
def postgres(request):
    """A running throwaway server; ``createdb(name)`` gives the URL of a fresh database on it."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    missing = None if found else ("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (apt-get install "
                                  "postgresql)")
    if psycopg is None:
        missing = 'the psycopg driver is not installed (pip install -e ".[postgres]")'
    if missing:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(missing)
    # as root, in /tmp: the postgres user must be able to enter every folder above the data folder
    root = Path(tempfile.mkdtemp(prefix="smallct-pg-", dir="/tmp" if os.geteuid() == 0 else None))
    root.chmod(0o755)
    server = Postgres(Path(found[-1]).parent, root)

    def stop():
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

    request.addfinalizer(stop)
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        if os.environ.get("CI"):
            pytest.fail(f"the PostgreSQL server did not start: {err}")
        pytest.skip(f"the PostgreSQL server did not start: {err}")
    return server


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    return write_phantom_png_set(tmp_path_factory.mktemp("pg-tune-data"), n=24, seed=0)


def _one_line(err: pytest.ExceptionInfo, *words: str) -> str:
    text = str(err.value)
    assert "\n" not in text and PASSWORD not in text, text
    assert all(w in text for w in words), text
    return text


# --- the storage's errors ------------------------------------------------------------------------------


def test_storage_errors_are_one_line_with_the_password_masked(postgres):
    url = postgres.createdb("errors")
    with pytest.raises(ValueError) as err:  # the server's own refusal
        make_storage(postgres.url("errors", password="wrong"))
    _one_line(err, f"postgresql://{USER}:***@127.0.0.1:{postgres.port}/errors", "password authentication failed")
    with pytest.raises(ValueError) as err:  # nobody listening
        make_storage(url.replace(str(postgres.port), str(_free_port())))
    _one_line(err, "Connection refused")
    with pytest.raises(ValueError) as err:  # a driver SQLAlchemy knows but this environment lacks
        make_storage(url.replace("postgresql://", "postgresql+pg8000://"))
    _one_line(err, "driver pg8000", "pip install pg8000")
    with pytest.raises(ValueError) as err:
        make_storage(f"postgresql://{USER}:{PASSWORD}@127.0.0.1:port/errors")
    _one_line(err, "not a database URL")
    with pytest.raises(ValueError) as err:
        make_storage(f"postgres://{USER}:{PASSWORD}@127.0.0.1/errors")  # SQLAlchemy's name is postgresql
    _one_line(err, "not a database URL")
    with pytest.raises(ValueError, match="--grace-period 2: must exceed --heartbeat-interval 2"):
        TuneConfig(heartbeat_interval=2, grace_period=2)
    storage = make_storage(url, heartbeat_interval=1, grace_period=3)  # the documented URL: psycopg 3
    assert isinstance(storage, RDBStorage) and storage.heartbeat_interval == 1 and storage.grace_period == 3
    assert storage.engine.dialect.driver == "psycopg"


def test_permanent_errors_are_not_retried(postgres):
    # errors no other worker will clear are said at once (the retries are for the creation race only)
    postgres.createdb("permanent")
    with psycopg.connect(postgres.url("permanent"), autocommit=True) as conn:  # a role that may not create tables
        conn.execute("CREATE ROLE reader LOGIN PASSWORD 'reader-pw'")
    cases = {"does not exist": postgres.url("no-such-db"),  # refused when connecting
             "permission denied for schema public":  # refused when Optuna creates its tables
             f"postgresql://reader:reader-pw@127.0.0.1:{postgres.port}/permanent"}
    for words, url in cases.items():
        began = time.perf_counter()
        with pytest.raises(ValueError) as err:
            make_storage(url)
        seconds = time.perf_counter() - began
        assert seconds < 2, (words, seconds)
        assert "reader-pw" not in _one_line(err, words, "***@127.0.0.1")


def test_the_password_is_masked_wherever_the_url_holds_it(postgres):
    url = postgres.createdb("masking")
    # libpq's password keyword in the query: refused, then accepted, and shown masked both times
    with pytest.raises(ValueError) as err:
        make_storage(f"postgresql://{USER}@127.0.0.1:{postgres.port}/masking?password=wrong-pw")
    assert "wrong-pw" not in _one_line(err, "password=***", "password authentication failed")
    in_query = f"postgresql://{USER}@127.0.0.1:{postgres.port}/masking?password={PASSWORD}"
    assert isinstance(make_storage(in_query), RDBStorage)
    assert masked(in_query) == f"postgresql://{USER}@127.0.0.1:{postgres.port}/masking?password=***"
    # an unescaped "@" in the password: the driver is given a host "x@127.0.0.1"
    with pytest.raises(ValueError) as err:
        make_storage(url.replace(f":{PASSWORD}@", f":{PASSWORD}@x@"))
    text = _one_line(err, f"postgresql://{USER}:***@127.0.0.1:{postgres.port}/masking")
    assert "x@" not in text.split(": ", 1)[1], text


def test_the_tune_command_says_a_storage_error_in_one_line(postgres, tiny_set, tmp_path, capsys):
    postgres.createdb("cli")
    argv = ["tune", "--data", str(tiny_set), "--img-size", "32", "--weights", "none", "--epochs", "1", "--folds",
            "2", "--workers", "1", "--no-tta", "--out", str(tmp_path / "study"), "--no-progress",
            "--storage", postgres.url("cli", password="wrong")]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("smallct tune: error: --storage postgresql://smallct:***@"), err
    assert "\n" not in err and "Traceback" not in err and PASSWORD not in err and "wrong" not in err, err


# --- first contact: several workers on a fresh database --------------------------------------------------

FIRST_CONTACT = """
import os, sys, time
from smallct.tuning.storage import create_or_load, make_storage
url, gun = sys.argv[1], sys.argv[2]
print("ready", flush=True)
while not os.path.exists(gun):  # every process leaves at the same moment, its imports done
    time.sleep(0.005)
study = create_or_load(url, storage=make_storage(url), study_name="race", direction="maximize")
print(study._study_id)
"""


def test_workers_that_start_together_create_one_study(postgres, tmp_path):
    # Optuna's known race (tables and study created by several processes at once) on a fresh database
    # (without the retries, about one start in three ends in an IntegrityError traceback on some of them)
    url, gun = postgres.createdb("race"), tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_CONTACT, url, str(gun)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
             for _ in range(6)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 6
    gun.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [o[1][-2000:] for o in outs]
    assert len({o[0].strip() for o in outs}) == 1  # one study, the same id in every process
    assert optuna.get_all_study_names(url) == ["race"]
    assert create_or_load(url, storage=make_storage(url), study_name="race", direction="maximize").trials == []


# --- a worker killed mid-trial ----------------------------------------------------------------------------


def _flags(data: Path, out: Path) -> list[str]:
    # each trial: 2 folds x 2 epochs of resnet18 at 32 px on 24 images, a few seconds on one core
    return ["--data", str(data), "--img-size", "32", "--weights", "none", "--epochs", "2", "--folds", "2",
            "--workers", "1", "--no-tta", "--out", str(out), "--no-progress", "--pruner", "none",
            "--search", "batch_size=8", "--search", "schedule=constant", "--search", "optimizer=sgd"]


def _holds_study(url: str, name: str) -> bool:
    """Whether the database holds the study, asked without Optuna (which would create its tables)."""
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('studies')").fetchone()[0] is None:
            return False
        return conn.execute("SELECT 1 FROM studies WHERE study_name = %s", (name,)).fetchone() is not None


def _running_trial_of(study: optuna.Study, pid: int) -> optuna.trial.FrozenTrial | None:
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # "worker" is set when the objective starts; a reported epoch means the trial is well under way
        if trial.user_attrs.get("worker", "").split(" ")[0].endswith(f"/{pid}") and trial.intermediate_values:
            return trial
    return None


def test_a_killed_worker_trial_is_failed_by_the_heartbeat_and_run_again(postgres, tiny_set, tmp_path):
    url = postgres.createdb("killed")
    trials = 5  # the survivor has 4 attempts after the kill: the stale check runs at the start of each
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    common = ["--storage", url, "--study", "head-ct", "--trials", str(trials), "--heartbeat-interval", "1",
              "--grace-period", "3"]
    began = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "smallct.tune", *_flags(tiny_set, tmp_path / f"w{i}"),
                               *common, "--worker", str(i), *(["--no-report"] if i == 0 else [])],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]  # both at once on a fresh database
    victim, survivor = procs
    try:
        storage, killed = None, None
        deadline = time.monotonic() + 180
        while killed is None and time.monotonic() < deadline and victim.poll() is None:
            time.sleep(0.2)
            if storage is None and _holds_study(url, "head-ct"):  # the workers made it: now we may look
                storage = make_storage(url)
            if storage is not None:
                killed = _running_trial_of(optuna.load_study(study_name="head-ct", storage=storage), victim.pid)
        if killed is None:
            victim.kill()
            pytest.fail(f"worker 0 ran no trial in time:\n{victim.communicate()[0][-3000:]}")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        log = survivor.communicate(timeout=240)[0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    seconds = time.perf_counter() - began
    assert survivor.returncode == 0, log
    study = optuna.load_study(study_name="head-ct", storage=url)
    states = {t.number: t.state for t in study.trials}
    assert states[killed.number] == TrialState.FAIL, (states, log)  # failed by the survivor's heartbeat check
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == trials, (states, log)
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].system_attrs["retry_history"] == [killed.number], states
    assert retried[0].state == TrialState.COMPLETE and retried[0].params == killed.params
    assert f"/{survivor.pid} (worker 1)" in retried[0].user_attrs["worker"]
    best = json.loads((tmp_path / "w1" / "best_params.json").read_text())
    assert best["_study"] == "head-ct" and best["_value"] == study.best_value
    assert best["_storage"] == f"postgresql://{USER}:***@127.0.0.1:{postgres.port}/killed"
    print(f"two workers, one killed: {len(study.trials)} trials in {seconds:.0f} s")
