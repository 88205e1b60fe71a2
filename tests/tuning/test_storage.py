"""The storage's first contact without a server: which errors are the creation race (retried) and which are
permanent (said at once), the URL's password masked and scrubbed from drivers' messages, failed attempts'
engines disposed of. tests/tuning/test_postgres.py does the same on a real PostgreSQL server."""

from __future__ import annotations

import random
import time

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from sqlalchemy import exc

from smallct.tuning import storage as storage_module
from smallct.tuning.storage import describe, is_race, make_storage, masked, retry_race, scrub


class DriverError(Exception):
    """A DB-API error as psycopg 3 (``sqlstate``), psycopg2 (``pgcode``) or MySQL (``args[0]``) raise it."""

    def __init__(self, message, sqlstate=None, pgcode=None, errno=None):
        super().__init__(*([errno, message] if errno is not None else [message]))
        self.sqlstate, self.pgcode = sqlstate, pgcode


def _wrapped(kind: type[exc.DBAPIError], message: str, **codes) -> exc.DBAPIError:
    return kind("CREATE TABLE studies (...)", {}, DriverError(message, **codes))


def _in_optuna(err: BaseException) -> optuna.exceptions.StorageInternalError:
    try:
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from err
    except optuna.exceptions.StorageInternalError as wrapped:
        return wrapped


# --- the race and the rest -------------------------------------------------------------------------------

RACES = [
    _wrapped(exc.IntegrityError, 'duplicate key value violates unique constraint "pg_type_typname_nsp_index"',
             sqlstate="23505"),
    _wrapped(exc.ProgrammingError, 'relation "studies" already exists', sqlstate="42P07"),
    _wrapped(exc.ProgrammingError, "some words in another language", sqlstate="42710"),
    _wrapped(exc.IntegrityError, "some words in another language", pgcode="23505"),  # psycopg2
    _wrapped(exc.OperationalError, "Table 'studies' already exists", errno=1050),  # MySQL
    _wrapped(exc.IntegrityError, "Duplicate entry 'x' for key 'study_name'", errno=1062),
    _wrapped(exc.IntegrityError, "UNIQUE constraint failed: studies.study_name"),  # SQLite: no code
    _in_optuna(_wrapped(exc.IntegrityError, "duplicate key value", sqlstate="23505")),
]
PERMANENT = [
    _wrapped(exc.ProgrammingError, "permission denied for schema public", sqlstate="42501"),
    _wrapped(exc.OperationalError, 'FATAL:  password authentication failed for user "smallct"', sqlstate="28P01"),
    _wrapped(exc.OperationalError, 'FATAL:  database "nope" does not exist', sqlstate="3D000"),
    _wrapped(exc.OperationalError, "(2003, \"Can't connect to MySQL server\")", errno=2003),
    _wrapped(exc.OperationalError, "database is locked"),
    _in_optuna(_wrapped(exc.ProgrammingError, "permission denied for schema public", sqlstate="42501")),
]


@pytest.mark.parametrize("err", RACES, ids=lambda e: str(getattr(e, "orig", e.__cause__)).split(" ")[0])
def test_the_creation_race_is_recognised(err):
    assert is_race(err)


@pytest.mark.parametrize("err", PERMANENT, ids=lambda e: str(getattr(e, "orig", e.__cause__)).split(" ")[0])
def test_permanent_errors_are_not_the_race(err):
    assert not is_race(err)


URL = "postgresql://smallct:hunter2-pw@db.lab:5432/tune"


@pytest.mark.parametrize("err", PERMANENT)
def test_a_permanent_error_is_said_at_once_in_one_line(err):
    calls = []

    def make():
        calls.append(1)
        raise err

    began = time.perf_counter()
    with pytest.raises(ValueError) as raised:
        retry_race(make, URL)
    assert calls == [1] and time.perf_counter() - began < 0.5  # no retry, no sleep
    text = str(raised.value)
    assert "\n" not in text and text.startswith("--storage postgresql://smallct:***@db.lab:5432/tune: ")
    assert "hunter2" not in text


def test_the_race_is_retried_with_a_generator_of_its_own():
    calls = []

    def make():
        calls.append(1)
        if len(calls) < 3:
            raise RACES[0]
        return "storage"

    random.seed(1234)
    state = random.getstate()
    assert retry_race(make, URL, wait=0.01) == "storage" and len(calls) == 3
    assert random.getstate() == state  # the global generator (seeded by trials) is left alone


def test_a_race_that_does_not_end_is_one_line_after_the_tries():
    calls = []

    def make():
        calls.append(1)
        raise RACES[1]

    with pytest.raises(ValueError, match=r'^--storage postgresql://smallct:\*\*\*@db.lab:5432/tune: DriverError: '
                                         r'relation "studies" already exists$'):
        retry_race(make, URL, tries=3, wait=0.001)
    assert len(calls) == 3


def test_make_storage_asks_the_configs_heartbeat_check():
    with pytest.raises(ValueError, match="--grace-period 5: must exceed --heartbeat-interval 5"):
        make_storage("sqlite:///unused.db", heartbeat_interval=5, grace_period=5)


def test_the_engine_of_a_failed_attempt_is_disposed_of(tmp_path, monkeypatch):
    real_create_all, engines, disposed = models.BaseModel.metadata.create_all, [], []

    def create_all(engine, *args, **kwargs):
        engines.append(engine)
        if len(engines) == 1:  # the first attempt meets another worker creating the tables
            raise exc.IntegrityError("CREATE TABLE", {}, DriverError("UNIQUE constraint failed: version_info.id"))
        return real_create_all(engine, *args, **kwargs)

    real_dispose = sqlalchemy.engine.Engine.dispose

    def dispose(engine, *args, **kwargs):
        disposed.append(engine)
        return real_dispose(engine, *args, **kwargs)

    monkeypatch.setattr(models.BaseModel.metadata, "create_all", create_all)
    monkeypatch.setattr(sqlalchemy.engine.Engine, "dispose", dispose)
    storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert isinstance(storage, RDBStorage) and len(engines) == 2
    assert engines[0] in disposed and storage.engine is engines[1] and engines[1] not in disposed


def test_the_jitter_is_not_the_global_generator():
    assert isinstance(storage_module._JITTER, random.Random) and storage_module._JITTER is not random._inst


# --- the password --------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
    # an unescaped "@" in the password: SQLAlchemy reads the password "p", the host "ss@h"
    ("postgresql+psycopg://u:p@ss@h/db", "postgresql+psycopg://u:***@h/db"),
    ("postgresql://u:p%40ss@h:5433/db", "postgresql://u:***@h:5433/db"),
    # libpq's password keyword in the query
    ("postgresql://u@h/db?password=hunter2&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
    # (SQLAlchemy renders the query's keys sorted)
    ("postgresql://u:pw@h/db?sslmode=require&password=hunter2", "postgresql://u:***@h/db?password=***&sslmode=require"),
    # unparsable (a port that is not a number): the credentials and the query's password hidden
    ("postgresql://u:pw@h:port/db?password=hunter2", "postgresql://***@h:port/db?password=***"),
    # nothing to hide: as given
    ("sqlite:////data/a@b/optuna.db", "sqlite:////data/a@b/optuna.db"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    ("journal:runs/tune/optuna.journal", "journal:runs/tune/optuna.journal"),
])
def test_masked_hides_every_password(url, shown):
    assert masked(url) == shown


def test_a_drivers_message_is_scrubbed_of_the_password():
    url = "postgresql://u:hunter2@h/db?password=other-pw"
    err = exc.OperationalError("connect", {}, DriverError('invalid connection option in "password=hunter2 '
                                                          'password=other-pw host=h"'))
    text = describe(url, err)
    assert "hunter2" not in text and "other-pw" not in text and text.count("***") == 4, text
    # an "@" in the password: the part the driver takes for the host is hidden too
    url = "postgresql://u:p4ss@w0rd@h/db"
    text = scrub(url, 'failed to resolve host "w0rd@h"; the URL had p4ss@w0rd and p4ss%40w0rd')
    assert text == 'failed to resolve host "***@h"; the URL had *** and ***'


def test_errors_of_the_connection_step_are_scrubbed(monkeypatch):
    url = "postgresql+psycopg://u:hunter2@h/db"

    def create_engine(*args, **kwargs):
        raise exc.ArgumentError("Could not parse the options of postgresql+psycopg://u:hunter2@h/db")

    monkeypatch.setattr(sqlalchemy, "create_engine", create_engine)
    with pytest.raises(ValueError) as raised:
        make_storage(url)
    text = str(raised.value)
    assert "hunter2" not in text and text.startswith("--storage postgresql+psycopg://u:***@h/db: "), text
