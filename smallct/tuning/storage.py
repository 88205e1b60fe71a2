"""Where a study's trials live: an Optuna storage from a URL.

``sqlite:///PATH`` (the default, ``OUT/optuna.db``: one process), ``journal:PATH`` (a journal file: several
processes on one host), ``postgresql://...`` or ``mysql://...`` (several machines), ``redis://...`` (a
journal in Redis). Database storages get heartbeats, so a killed worker's trial is failed and run again.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalRedisBackend
from sqlalchemy.engine import make_url


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


def make_storage(url: str):
    """An Optuna storage from ``url``: any SQLAlchemy URL (sqlite, postgresql, mysql), ``journal:PATH``
    (or a path ending in ``.journal``/``.log``) for a journal file, or ``redis://...`` for a journal in Redis.

    RDB storages get heartbeats: a trial of a killed worker is marked failed after 3 minutes and
    re-queued once (its settings run again).
    """
    kind = storage_kind(url)
    if kind == "redis":
        return JournalStorage(JournalRedisBackend(url))
    if kind == "journal":
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=60, grace_period=180,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))


def masked(url: str) -> str:
    """The storage URL without its password (it is written to best_params.json and logs)."""
    if "://" not in url or "@" not in url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown without its credentials part
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
