"""What a finished (or running) study reports: best_params.json, the tables, the summary and the plots.

``best_params.json`` (the best trial's cv settings, with ``_note`` saying they were tuned on these folds),
``top_trials.csv`` (also printed) and ``trials.csv``, ``summary.json`` (counts, best value, trials per hour,
the share of epochs pruning saved) and Optuna's matplotlib plots, under the study folder.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState
from optuna.visualization import matplotlib as ovm

from smallct.config.studies import TuneConfig
from smallct.io.files import atomic_csv, atomic_json
from smallct.tuning.storage import default_storage, masked


def summarize(study: optuna.Study) -> dict:
    """Counts, best value, trials per hour (one worker's trial durations) and the share of epochs pruning saved."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    run = sum(t.user_attrs.get("epochs_run", 0) for t in finished)
    full = sum(t.user_attrs.get("epochs_full", 0) for t in finished)
    seconds = sum(t.duration.total_seconds() for t in finished if t.duration is not None)
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    out = {"trials": len(trials), **{s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
           "epochs_trained": run, "epochs_without_pruning": full,
           "share_of_epochs_saved_by_pruning": 1 - run / full if full else 0.0,
           "trials_per_hour": 3600 * len(finished) / seconds if seconds else None,  # per worker
           "complete_trial_minutes": (float(np.mean([t.duration.total_seconds() for t in complete])) / 60
                                      if complete else None)}
    if complete:
        out.update(best_value=study.best_value, best_trial=study.best_trial.number, best_params=study.best_params)
    return out


def best_params_record(study: optuna.Study, cfg: TuneConfig, metric: str) -> dict:
    """``best_params.json``: the best trial's cv settings, with metadata keys (``_note``, ...) cv records."""
    best = study.best_trial
    storage = masked(cfg.storage or default_storage(cfg.base.out))
    note = (f"settings tuned by Optuna study {cfg.study} (trial {best.number}, {metric} "
            f"{best.value:.4f}) on the same data and folds, so a cross-validated figure with them is "
            "optimistic; this study saw every image, so smallct.nested over this file does not make it honest "
            "either (that would need the study inside each training part)")
    return {"_note": note, "_study": cfg.study, "_storage": storage, "_value": best.value, "_metric": metric,
            "_trial": best.number, "_searched": sorted(best.params), "_data": study.user_attrs.get("data_source"),
            "_chosen_on": study.user_attrs.get("setup", {}).get("data"),  # the images' fingerprint: cv compares it
            **best.user_attrs.get("settings", best.params)}


def top_trials(study: optuna.Study, k: int = 10) -> pd.DataFrame:
    """The ``k`` best complete trials: number, value, minutes, epochs, searched settings."""
    rows = [{"trial": t.number, "value": t.value, "minutes": t.duration.total_seconds() / 60 if t.duration else None,
             "epochs": t.user_attrs.get("epochs_run"), **t.params}
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values("value", ascending=study.direction.name == "MINIMIZE").head(k)
    return table.reset_index(drop=True)


def write_plots(study: optuna.Study, out: Path, log=print) -> list[Path]:
    """Optimisation history, parameter importances, slices and intermediate values as PNG files."""
    plots = {"optimization_history": ovm.plot_optimization_history, "param_importances": ovm.plot_param_importances,
             "slice": ovm.plot_slice, "intermediate_values": ovm.plot_intermediate_values}
    written = []
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. importances of fewer than 2 trials
            log(f"plot {name} skipped: {err}")
            continue
        fig = np.asarray(ax).ravel()[0].figure
        fig.set_size_inches(max(fig.get_size_inches()[0], 6), max(fig.get_size_inches()[1], 4))
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def write_report(study: optuna.Study, cfg: TuneConfig, metric: str, log=print) -> dict:
    """best_params.json, top_trials.csv, trials.csv, summary.json and the plots under ``cfg.base.out``."""
    out = Path(cfg.base.out)
    summary = summarize(study)
    atomic_json(out / "summary.json", summary)
    atomic_csv(out / "trials.csv", study.trials_dataframe())
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]
    for t in failed:
        log(f"trial {t.number} failed: {t.user_attrs.get('fail_reason', 'no reason recorded (worker killed?)')}")
    if summary["complete"] == 0:
        log(f"no complete trial yet in study {cfg.study}: no best_params.json")
        return summary
    atomic_json(out / "best_params.json", best_params_record(study, cfg, metric))
    table = top_trials(study, cfg.top)
    atomic_csv(out / "top_trials.csv", table)
    write_plots(study, out, log)
    log(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    log(f"{summary['complete']} complete, {summary['pruned']} pruned, {summary['fail']} failed; pruning saved "
        f"{summary['share_of_epochs_saved_by_pruning']:.0%} of the epochs; "
        f"{summary['trials_per_hour']:.1f} trials/h per worker")
    log(f"best {metric} {study.best_value:.4f} (trial {study.best_trial.number}); apply it with: python -m smallct.cv "
        f"--data DIR --params {out / 'best_params.json'}   (an optimistic figure: tuned on these folds)")
    return summary
