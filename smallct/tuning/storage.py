"""Where a study's trials live: an Optuna storage from a URL.

``sqlite:///PATH`` (the default, ``OUT/optuna.db``: one process), ``journal:PATH`` (a journal file: several
processes on one host), ``postgresql://...`` or ``mysql://...`` (several machines), ``redis://...`` (a
journal in Redis). Database storages get heartbeats, so a killed worker's trial is failed and run again.

Several machines may start at the same moment on a fresh database: the first contact (Optuna creating its
tables, then the study) is retried while another worker is doing the same (Optuna's known race: an
``IntegrityError`` or "relation already exists" on one of them, see :func:`is_race`); any other error (a
missing driver, a bad URL, a refused connection, a wrong password, no right to create tables) is not retried
but said at once in a one-line ``ValueError`` naming the URL without its password (:func:`masked`; the
password is also scrubbed from the driver's message, :func:`scrub`).
"""

from __future__ import annotations

import random
import re
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, quote_plus

import optuna
import sqlalchemy
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalRedisBackend
from sqlalchemy import exc
from sqlalchemy.engine import make_url

from smallct.config.studies import check_heartbeat

T = TypeVar("T")

# The error types two workers may meet when they create the same tables or study at once; Optuna wraps some
# in StorageInternalError. Only those that :func:`is_race` recognises are retried: the same types also carry
# permanent errors (no such database, a wrong password, no right to create tables).
RACE = (exc.IntegrityError, exc.ProgrammingError, exc.OperationalError, optuna.exceptions.StorageInternalError)
# PostgreSQL's SQLSTATEs of the race: unique_violation (a row or the pg_type entry of a table created at
# once), duplicate_table ("relation ... already exists"), duplicate_object (an index or constraint)
RACE_SQLSTATES = frozenset({"23505", "42P07", "42710"})
# MySQL's error numbers of the race: table exists, duplicate key name, duplicate entry
RACE_MYSQL_ERRORS = frozenset({1050, 1061, 1062})
# ... and their words, for drivers that give no code (SQLite: "table ... already exists", "UNIQUE constraint
# failed")
RACE_WORDS = ("already exists", "duplicate key", "duplicate entry", "unique constraint", "uniqueviolation",
              "unique violation")
TRIES = 6  # about 10 s of retrying in all (0.5, 1, 1.5, ... s, with jitter)
_JITTER = random.Random()  # the retries' own: the global generator is seeded by trials and tests

# SQLAlchemy's driver of a URL (postgresql:// means psycopg 3 since SQLAlchemy 2.1) -> how to install it.
DRIVERS = {
    "psycopg": 'pip install "psycopg[binary]" (or pip install -e ".[postgres]")',
    "psycopg2": "pip install psycopg2-binary",
    "pg8000": "pip install pg8000",
    "asyncpg": "pip install asyncpg",
    "mysqldb": "pip install mysqlclient",
    "pymysql": "pip install pymysql",
    "mysqlconnector": "pip install mysql-connector-python",
}


def default_storage(out: Path) -> str:
    return f"sqlite:///{(Path(out) / 'optuna.db').resolve()}"


def storage_kind(url: str) -> str:
    """``journal`` (a file), ``redis`` (a journal in Redis) or ``rdb`` (a database URL); ``ValueError`` otherwise."""
    if url.startswith("redis://"):
        return "redis"
    if url.startswith("journal:") or ("://" not in url and url.endswith((".journal", ".log"))):
        return "journal"
    if "://" not in url:
        raise ValueError(f"--storage {url}: expected a database URL (sqlite:///PATH, postgresql://...) or "
                         "journal:PATH")
    return "rdb"


def make_storage(url: str, *, heartbeat_interval: int = 60, grace_period: int = 180):
    """An Optuna storage from ``url``: any SQLAlchemy URL (sqlite, postgresql, mysql), ``journal:PATH``
    (or a path ending in ``.journal``/``.log``) for a journal file, or ``redis://...`` for a journal in Redis.

    RDB storages get heartbeats: every ``heartbeat_interval`` seconds a running trial says it is alive; a trial
    silent for ``grace_period`` seconds (its worker was killed) is marked failed by the next trial any worker
    starts, and re-queued once (its settings run again). Creating Optuna's tables is retried while another
    worker creates them. ``ValueError`` (one line, the URL without its password) for any storage error.
    """
    check_heartbeat(heartbeat_interval, grace_period)  # TuneConfig's own check, for callers without one
    kind = storage_kind(url)
    if kind == "redis":
        try:
            return JournalStorage(JournalRedisBackend(url))
        except ImportError as err:
            raise ValueError(f"--storage {masked(url)}: the redis package is not installed; pip install redis") from err
    if kind == "journal":
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    _connect(url, kwargs)  # a missing driver, a bad URL, no server, a wrong password: one line, no retry

    def create() -> RDBStorage:
        # made in two steps, so that the engine of an attempt that fails (the race, or any error) is disposed
        # of rather than left holding its connections until garbage collection
        storage = RDBStorage.__new__(RDBStorage)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                storage.__init__(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_interval,
                                 grace_period=grace_period,
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
                return storage
            except BaseException as err:
                engine = getattr(storage, "engine", None)
                if engine is not None:
                    engine.dispose()
                if isinstance(err, RuntimeError):  # tables of another Optuna version: "optuna storage upgrade"
                    raise _error(url, _first_line(err)) from err
                raise

    return retry_race(create, url)


def create_or_load(url: str, **kwargs) -> optuna.Study:
    """``optuna.create_study(..., load_if_exists=True)``, retried while another worker creates the same study
    (or the tables beneath it); ``kwargs`` go to ``create_study`` (with ``storage``, a storage of ``url``)."""
    return retry_race(lambda: optuna.create_study(load_if_exists=True, **kwargs), url)


def retry_race(make: Callable[[], T], url: str, tries: int = TRIES, wait: float = 0.5) -> T:
    """``make()``, tried again after a short, jittered sleep when it meets another worker's first contact
    (:func:`is_race`); any other storage error at once, and the race's after ``tries``, as a one-line
    ``ValueError``."""
    for attempt in range(1, tries + 1):
        try:
            with storage_errors(url, reraise=RACE):
                return make()
        except RACE as err:
            if attempt == tries or not is_race(err):
                raise ValueError(describe(url, err)) from err
            time.sleep(wait * attempt * (0.5 + _JITTER.random()))
    raise AssertionError("unreachable")


def is_race(err: BaseException) -> bool:
    """Whether ``err`` (or the database error beneath Optuna's ``StorageInternalError``) is what a worker meets
    when another creates the same table, type, index or row at the same moment (a duplicate key, "already
    exists"): the PostgreSQL SQLSTATE (psycopg 3 ``sqlstate``, psycopg2 ``pgcode``), MySQL's error number, or
    else the words of the message. Permanent errors (no such database, a wrong password, permission denied)
    are not."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        original = getattr(err, "orig", None)
        for candidate in (original, err):
            if candidate is None:
                continue
            code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
            if code in RACE_SQLSTATES:
                return True
            args = getattr(candidate, "args", ())
            if args and isinstance(args[0], int) and args[0] in RACE_MYSQL_ERRORS:
                return True
        if any(word in str(original if original is not None else err).lower() for word in RACE_WORDS):
            return True
        err = err.__cause__  # StorageInternalError(...) from the database's error
    return False


@contextmanager
def storage_errors(url: str, reraise: tuple[type[BaseException], ...] = ()):
    """Database errors inside the block become one-line ``ValueError`` s naming the masked ``url`` (the
    command line prints them so); errors of the types in ``reraise`` pass unchanged."""
    try:
        yield
    except reraise:
        raise
    except (exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
        raise ValueError(describe(url, err)) from err


def describe(url: str, err: BaseException) -> str:
    """One line: the masked URL and the database's own first line of the error (driver errors, not SQL),
    with the URL's password scrubbed from it (a driver may quote its connection string)."""
    cause = err
    while isinstance(cause, optuna.exceptions.StorageInternalError) and cause.__cause__ is not None:
        cause = cause.__cause__
    original = getattr(cause, "orig", None) or cause
    return f"--storage {masked(url)}: {scrub(url, f'{type(original).__name__}: {_first_line(original)}')}"


def _error(url: str, detail: str) -> ValueError:
    """The one-line error of ``url``: its masked form, then ``detail`` (often a driver's words) scrubbed."""
    return ValueError(f"--storage {masked(url)}: {scrub(url, detail)}")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else repr(err)


def _connect(url: str, engine_kwargs: dict) -> None:
    """Connect once, so that what stops every later step is said in one line before Optuna starts."""
    try:
        parsed = make_url(url)
        driver = parsed.get_driver_name()
    except (exc.ArgumentError, ValueError) as err:  # no such dialect, a port that is not a number, ...
        raise _error(url, f"not a database URL SQLAlchemy can read ({_first_line(err)}); expected e.g. "
                          "sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB") from err
    try:
        engine = sqlalchemy.create_engine(url, **engine_kwargs)
    except ImportError as err:  # the URL's DB-API driver is missing
        hint = DRIVERS.get(driver, f"install the {driver} package")
        raise _error(url, f"needs the database driver {driver}, which is not installed ({_first_line(err)}); "
                          f"{hint}") from err
    except exc.ArgumentError as err:
        raise _error(url, _first_line(err)) from err
    try:
        with engine.connect():
            pass
    except exc.SQLAlchemyError as err:
        raise ValueError(describe(url, err)) from err
    finally:
        engine.dispose()


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def masked(url: str) -> str:
    """The storage URL without its password (it is written to best_params.json and logs): the password of
    ``USER:PASSWORD@HOST`` as SQLAlchemy reads it (with an unescaped ``@`` in the password, everything up to the
    host's last ``@``) and a ``password=`` query parameter (libpq's keyword) become ``***``."""
    if "://" not in url:
        return url
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown without its credentials part
        scheme, rest = url.split("://", 1)
        if "@" in rest:
            rest = "***@" + rest.rsplit("@", 1)[1]
        return _QUERY_PASSWORD.sub(r"\1***", f"{scheme}://{rest}")
    if not _secrets(url):  # nothing to hide: the URL as given (SQLAlchemy's rendering re-escapes paths)
        return url
    if parsed.host and "@" in parsed.host:  # "u:p@ss@h": SQLAlchemy's password is "p", its host "ss@h"
        parsed = parsed.set(password=parsed.password or "", host=parsed.host.rsplit("@", 1)[1])
    return _QUERY_PASSWORD.sub(r"\1***", parsed.render_as_string(hide_password=True))


def _secrets(url: str) -> list[tuple[str, str]]:
    """The passwords in ``url`` (as written and decoded), longest first, each with what replaces it in a
    message: the one of its credentials (the whole of one with an unescaped ``@``, and its part SQLAlchemy
    takes for the host), a ``password=`` query parameter."""
    found: set[str] = set()
    spilled: set[str] = set()
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - unparsable: whatever stands between "USER:" and the last "@"
        rest = url.split("://", 1)[-1]
        if "@" in rest:
            userinfo = rest.rsplit("@", 1)[0]
            found.add(userinfo.split(":", 1)[1] if ":" in userinfo else userinfo)
        found.update(m.group(0).split("=", 1)[1] for m in _QUERY_PASSWORD.finditer(url))
    else:
        password = parsed.password
        if password is not None:
            if parsed.host and "@" in parsed.host:  # "u:p@ss@h": the password "p@ss", a host "ss@h"
                spill = parsed.host.rsplit("@", 1)[0]
                found.add(f"{password}@{spill}")
                spilled.add(f"{spill}@")  # a driver's "host ss@h" becomes "host ***@h"
            else:
                found.add(password)
        for key, value in parsed.query.items():
            if key.lower() == "password":
                found.update([value] if isinstance(value, str) else value)
    found = {s for s in found if s}
    found |= {q for s in found for q in (quote(s, safe=""), quote_plus(s, safe=""))}
    pairs = [(s, "***") for s in found] + [(s, "***@") for s in spilled - found]
    return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)


def scrub(url: str, text: str) -> str:
    """``text`` (a driver's message) without any of ``url``'s passwords in it."""
    for secret, replacement in _secrets(url):
        text = text.replace(secret, replacement)
    return text
