"""Fixed-seed runs of every figure-making command, and their expected outputs (``tests/expected/``).

The restructuring of issue 15 promised "figures, files and folds stay the same". This module runs a
fixed set of small commands (cv on the phantom, on the real Head CT set and on a prepared synthetic
RSNA set; nested; tune; compare; predict; fewshot with fine-tuning; curve; audit) through their
command lines, at one torch thread and one decoding process, and keeps what they wrote that carries
a figure or a fold: fold assignments and near-duplicate pairs, ``oof.csv``, ``results.json``,
``fewshot.csv``, ``episodes.csv``, ``curve_folds.csv``, ``audit.json``, ``compare.json``, the
study's trials and the predictions.

Regenerate (after a change that is *meant* to move figures; list the difference in your note)::

    SMALLCT_HEAD_CT=../shared/data/head_ct python tests/expected_runs.py --write

Check without writing (``--exact``: bit for bit, for the same machine; the test allows for the
rounding of another CPU's kernels)::

    python tests/expected_runs.py --check [--exact]

What a model *trained* here gives (probabilities, per-fold figures, intervals, a tuner's values) repeats on
one machine, but not across machines: these runs train random-init models for an epoch or two, where
another CPU's kernels (AVX-512 against AVX2, say: other rounding of the same sums) flip early updates and
move probabilities by up to 0.99 (measured: the same cv_head_ct command pinned to AVX2 on one machine).
So ``machine.json`` records the machine the expected files came from; on another machine the trained
numbers are not compared (the check says so), and everything else is: folds, ids, files, labels, groups,
classes, the resampling units, the columns and keys of every file, the sampled settings of the trials and
every figure computed without training (few-shot on frozen embeddings, the learning curve's probe, the
audit).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected"
SHARED_DATA = HERE.parent.parent / "shared" / "data"

# Timings and machine facts change from run to run; everything else is compared.
VOLATILE = {"seconds", "seconds_this_session", "seconds_all_folds", "versions", "minutes", "duration",
            "datetime_start", "datetime_complete", "trials_per_hour", "complete_trial_minutes", "path", "source",
            "data", "out", "run", "run_a", "run_b", "labels", "folds_from", "dicom", "config", "weights",
            "params_source", "settings_source", "_storage"}


def _cli(module: str, argv: list[str]) -> None:
    """Run ``python -m smallct.<module> ARGV`` in this process; fail on a non-zero exit."""
    import importlib

    main = importlib.import_module(f"smallct.{module}").main
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        code = main([str(a) for a in argv])
    if code != 0:
        raise RuntimeError(f"python -m smallct.{module} {' '.join(map(str, argv))}: exit {code}")


def run_commands(work: Path, head_ct: Path) -> dict[str, Path]:
    """Run every command into ``work``; returns {name: output folder or file}."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ["SMALLCT_CACHE"] = str(work / "cache")
    try:
        return _run_commands(work, head_ct)
    finally:
        torch.set_num_threads(threads)


def _run_commands(work: Path, head_ct: Path) -> dict[str, Path]:
    quiet = ["--no-progress"]
    tiny = ["--arch", "resnet18", "--weights", "none", "--img-size", "32", "--epochs", "1", "--batch-size", "16",
            "--no-tta", "--workers", "1", *quiet]
    out: dict[str, Path] = {}

    out["cv_phantom"] = work / "cv_phantom"
    _cli("cv", [*tiny, "--folds", "2", "--repeats", "2", "--out", out["cv_phantom"]])

    out["cv_head_ct"] = work / "cv_head_ct"
    _cli("cv", ["--data", head_ct, *tiny, "--folds", "3", "--epochs", "2", "--tta", "--out", out["cv_head_ct"]])
    out["cv_head_ct_lr"] = work / "cv_head_ct_lr"
    _cli("cv", ["--data", head_ct, *tiny, "--folds", "3", "--epochs", "2", "--tta", "--lr", "0.01",
                "--optimizer", "sgd", "--schedule", "step", "--step-size", "1", "--out", out["cv_head_ct_lr"]])
    out["compare"] = work / "compare"
    _cli("compare", [out["cv_head_ct"], out["cv_head_ct_lr"], "--n-boot", "300", "--out", out["compare"]])

    out["predict"] = work / "predictions.csv"
    files = sorted(head_ct.glob("*.png"))[::20]
    _cli("predict", ["--run", out["cv_head_ct"], "--data", *files, "--tta", "--workers", "1", "--out",
                     out["predict"], *quiet])

    from smallct.datasets.synthetic_dicom import write_synthetic_rsna

    raw = write_synthetic_rsna(work / "rsna_raw", n_patients=8, slices_per_series=4, size=64, seed=0)
    prepared = work / "rsna_prepared"
    _cli("prepare", ["rsna", "--dicom", raw["root"], "--labels", raw["labels"], "--out", prepared, "--size", "48",
                     "--workers", "1", *quiet])
    out["cv_rsna"] = work / "cv_rsna"
    _cli("cv", ["--data", prepared, "--task", "multilabel", *tiny, "--folds", "3", "--epochs", "2",
                "--out", out["cv_rsna"]])

    candidates = []
    for name, settings in (("slow", {"lr": 1e-3}), ("fast", {"lr": 1e-2, "optimizer": "sgd"})):
        path = work / f"{name}.json"
        path.write_text(json.dumps(settings))
        candidates.append(str(path))
    out["nested"] = work / "nested"
    _cli("nested", ["--data", head_ct, *tiny, "--folds", "2", "--candidates", ",".join(candidates),
                    "--inner-folds", "2", "--out", out["nested"]])

    out["tune"] = work / "tune"
    _cli("tune", [*tiny, "--folds", "2", "--epochs", "2", "--trials", "3", "--search", "lr=1e-3:1e-1",
                  "--out", out["tune"], "--no-report"])

    out["fewshot"] = work / "fewshot"
    _cli("fewshot", ["--data", head_ct, "--arch", "tf_efficientnet_lite0", "--weights", "imagenet", "--img-size",
                     "64", "--shots", "1,5", "--episodes", "4", "--method", "proto,linear,knn,labelprop,finetune",
                     "--finetune-episodes", "1", "--finetune-img-size", "32", "--epochs", "1", "--out",
                     out["fewshot"], *quiet])

    out["curve"] = work / "curve"
    _cli("curve", ["--data", head_ct, "--arch", "tf_efficientnet_lite0", "--weights", "imagenet", "--img-size",
                   "64", "--sizes", "10,40", "--folds", "3", "--out", out["curve"], *quiet])

    out["audit"] = work / "audit"
    _cli("audit", ["--data", head_ct, "--folds", "3", "--n-boot", "200", "--out", out["audit"], *quiet])
    return out


# Files whose numbers come from training (compared on the machine of machine.json only, but for the
# values under STRUCTURE); in few-shot files only the rows of the fine-tuning method are trained.
TRAINED = ("cv_phantom.oof.csv", "cv_phantom.results.json", "cv_head_ct.oof.csv", "cv_head_ct.results.json",
           "cv_head_ct_lr.oof.csv", "cv_head_ct_lr.results.json", "cv_rsna.oof.csv", "cv_rsna.results.json",
           "nested.oof.csv", "nested.results.json", "compare.json", "predictions.csv", "tune.trials.csv")
TRAINED_ROWS = {"fewshot.csv": ("method", "finetune"), "fewshot.episodes.csv": ("method", "finetune")}
STRUCTURE = {"id", "file", "label", "fold", "repeat", "any", "epidural", "intraparenchymal", "intraventricular",
             "subarachnoid", "subdural", "number", "ci_resampled", "ci_method", "positive_class", "class_names",
             "n_images", "n_units", "unit", "units", "method", "shots", "episode", "n_query", "n_excluded"}
MACHINE = "machine.json"


def machine() -> dict:
    """What decides the rounding of torch's CPU kernels here: torch, its kernel level, the CPU's vector units."""
    import torch

    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        units = sorted(f for f in flags.split(":")[1].split() if f.startswith(("avx", "amx", "fma", "sse4")))
    except (OSError, StopIteration):
        units = []
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(), "vector_units": units}


def _structure_only(value, key: str = ""):
    """``value`` with the trained numbers blanked out: what must match on any machine."""
    if isinstance(value, pd.DataFrame):
        return value[[c for c in value.columns if c in STRUCTURE or c.startswith("param_")]]
    if isinstance(value, dict):
        return {k: (v if k in STRUCTURE else _structure_only(v, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_structure_only(v, key) for v in value]
    return None if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value


def _untrained_rows(table: pd.DataFrame, column: str, trained: str) -> pd.DataFrame:
    return table[table[column] != trained].reset_index(drop=True)


def _strip(obj):
    """JSON without the volatile keys (timings, paths, versions)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _trials(study_dir: Path) -> pd.DataFrame:
    import optuna

    study = optuna.load_study(study_name="smallct", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    rows = [{"number": t.number, "state": t.state.name, "value": t.value,
             **{f"param_{k}": v for k, v in sorted(t.params.items())},
             **{k: v for k, v in sorted(t.user_attrs.items()) if k.startswith("roc_auc_")}}
            for t in study.get_trials(deepcopy=False)]
    return pd.DataFrame(rows)


def collect(outputs: dict[str, Path]) -> dict[str, object]:
    """{file name: a DataFrame or a JSON-ready object}: what is compared."""
    found: dict[str, object] = {}
    for name in ("cv_phantom", "cv_head_ct", "cv_head_ct_lr", "cv_rsna", "nested"):
        run = outputs[name]
        record = json.loads((run / "run.json").read_text())
        found[f"{name}.folds.json"] = {"folds": record["folds"], "similar_images": record.get("similar_images"),
                                       "class_names": record["class_names"], "input": _strip(record["input"])}
        found[f"{name}.oof.csv"] = pd.read_csv(run / "oof.csv", dtype={"id": str})
        found[f"{name}.results.json"] = _strip(json.loads((run / "results.json").read_text()))
    found["compare.json"] = _strip(json.loads((outputs["compare"] / "compare.json").read_text()))
    found["predictions.csv"] = pd.read_csv(outputs["predict"], dtype={"id": str}).drop(columns="file")
    found["tune.trials.csv"] = _trials(outputs["tune"])
    found["fewshot.csv"] = pd.read_csv(outputs["fewshot"] / "fewshot.csv")
    found["fewshot.episodes.csv"] = pd.read_csv(outputs["fewshot"] / "episodes.csv")
    found["curve_folds.csv"] = pd.read_csv(outputs["curve"] / "curve_folds.csv")
    found["audit.json"] = _strip(json.loads((outputs["audit"] / "audit.json").read_text()))
    return found


def write(found: dict[str, object], folder: Path = EXPECTED) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / MACHINE).write_text(json.dumps(machine(), indent=1, sort_keys=True) + "\n")
    for name, value in found.items():
        if isinstance(value, pd.DataFrame):
            value.to_csv(folder / name, index=False)
        else:
            (folder / name).write_text(json.dumps(value, indent=1, sort_keys=True, default=float) + "\n")


def read(folder: Path = EXPECTED) -> dict[str, object]:
    found: dict[str, object] = {}
    for path in sorted(folder.iterdir()):
        if path.name == MACHINE:
            continue
        if path.suffix == ".csv":
            found[path.name] = pd.read_csv(path, dtype={"id": str})
        elif path.suffix == ".json":
            found[path.name] = json.loads(path.read_text())
    return found


def _roundtrip(value):
    """As it reads back from the expected folder (CSV dtypes, JSON numbers)."""
    if isinstance(value, pd.DataFrame):
        with tempfile.TemporaryDirectory() as tmp:
            value.to_csv(Path(tmp) / "x.csv", index=False)
            return pd.read_csv(Path(tmp) / "x.csv", dtype={"id": str})
    return json.loads(json.dumps(value, sort_keys=True, default=float))


def differences(expected, actual, where: str = "", atol: float = 0.0) -> list[str]:
    """Where ``actual`` differs from ``expected``: numbers beyond ``atol``, anything else at all."""
    if isinstance(expected, pd.DataFrame):
        expected = expected.to_dict(orient="list")
        actual = actual.to_dict(orient="list") if isinstance(actual, pd.DataFrame) else actual
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(expected) != set(actual):
            keys = set(expected) ^ set(actual) if isinstance(actual, dict) else "not a mapping"
            return [f"{where}: keys differ ({keys})"]
        return [d for k in expected for d in differences(expected[k], actual[k], f"{where}.{k}", atol)]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(expected) != len(actual):
            got = len(actual) if isinstance(actual, list) else actual
            return [f"{where}: length {len(expected)} expected, got {got}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{where}[{i}]", atol)]
    numbers = (int, float)
    if isinstance(expected, numbers) and isinstance(actual, numbers) and not isinstance(expected, bool):
        if math.isnan(expected) and math.isnan(actual):
            return []
        if abs(expected - actual) <= atol and not (atol == 0 and expected != actual):
            return []
        return [f"{where}: {expected!r} expected, got {actual!r}"]
    if expected != actual and not (isinstance(expected, float) and isinstance(actual, float)
                                   and math.isnan(expected) and math.isnan(actual)):
        return [f"{where}: {expected!r} expected, got {actual!r}"]
    return []


def compare(found: dict[str, object], expected: dict[str, object], atol: float = 0.0,
            trained: bool = True) -> list[str]:
    """Every difference between the outputs found and the expected ones; ``trained=False`` (another machine than
    the expected files') leaves out the numbers that come from training (:data:`TRAINED`)."""
    problems = []
    missing = sorted(set(expected) ^ set(found))
    if missing:
        problems.append(f"files differ: {missing}")
    for name in sorted(set(expected) & set(found)):
        want, got = expected[name], _roundtrip(found[name])
        if not trained and name in TRAINED:
            if isinstance(want, pd.DataFrame) and list(want.columns) != list(got.columns):
                problems.append(f"{name}: columns {list(want.columns)} expected, got {list(got.columns)}")
            want, got = _structure_only(want), _structure_only(got)
        elif not trained and name in TRAINED_ROWS:
            column, value = TRAINED_ROWS[name]
            want, got = _untrained_rows(want, column, value), _untrained_rows(got, column, value)
        problems += differences(want, got, name, atol)
    return problems


def same_machine(folder: Path = EXPECTED) -> tuple[bool, str]:
    """Whether this machine rounds as the one that wrote ``folder`` did, and a line saying which they are."""
    path = folder / MACHINE
    recorded = json.loads(path.read_text()) if path.is_file() else None
    here = machine()
    if recorded == here:
        return True, f"same machine as the expected files ({here['cpu_capability']}, torch {here['torch']})"
    return False, (f"the expected files come from another machine ({recorded}; here {here}): the numbers of trained "
                   f"models ({', '.join(TRAINED)} and the fine-tuning rows of few-shot) are not compared, "
                   f"everything else is")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help="write tests/expected/ from a fresh run")
    p.add_argument("--check", action="store_true", help="compare a fresh run with tests/expected/")
    p.add_argument("--exact", action="store_true", help="with --check: every number bit for bit")
    p.add_argument("--keep", type=Path, help="run into this folder and keep it")
    args = p.parse_args(argv)
    head_ct = Path(os.environ.get("SMALLCT_HEAD_CT") or SHARED_DATA / "head_ct")
    sys.path.insert(0, str(HERE.parent))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        found = collect(run_commands(work, head_ct))
        if args.write:
            write(found)
            print(f"wrote {len(found)} files to {EXPECTED}")
        if args.check:
            same, line = same_machine()
            print(line)
            problems = compare(found, read(), atol=0.0 if args.exact else 1e-3, trained=same or args.exact)
            print("\n".join(problems[:50]) or f"all {len(found)} outputs as expected")
            return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
