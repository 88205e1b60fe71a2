"""RSNA with series context (#30): a synthetic set that needs it, its difficulty fixed once, then the arms.

    python bench/rsna.py generate --out /tmp/rsna-bench          # 500 x 40 slices at 64 px, then prepare
    python bench/rsna.py calibrate --out /tmp/rsna-bench         # the 2D arm, 5 patient-grouped folds
    python bench/rsna.py calibrate --out /tmp/rsna-bench --contrast 6 --epochs 1   # one calibration step
    python bench/rsna.py arms --out /tmp/rsna-bench              # every arm (finished folders are read), paired
    python bench/rsna.py all --out /tmp/rsna-bench               # generate when not yet done, then arms

The set (:func:`smallct.datasets.synthetic_dicom.write_synthetic_rsna` with ``lesions="context"``): 500
patients, one series of 40 slices each, 64 px, bleeds on contiguous runs of 3-8 slices, faint, about 14% of
slices with ``any``; then ``python -m smallct.prepare rsna`` at 64 px. Its difficulty was fixed once
(``calibrate``: the 2D arm's pooled out-of-fold AUC of ``any`` between 0.65 and 0.80 on seed 0) and the chosen
generator settings are :data:`GENERATOR`; they are not changed afterwards. Every arm uses :data:`CV_2D`'s
settings and the same folds (``--seed 0``, patient-grouped: the prepared manifest's patients).

Arms (``arm_*``, in ``runs/``): 2D (:func:`arm_2d`), ``--context 1`` run with ``--smooth 3`` (:func:`arm_context`;
its smoothed figures are the arm ``--context 1 --smooth 3``, :func:`arm_context_smooth`), the sequence model on
that run (:func:`arm_sequence`: stacking with the default logits, stacking with ``--features both``, then
``--strict``, the costliest, last). :func:`paired` compares two arms on the same folds (B - A weighted log loss
and mean AUC, paired percentile bootstrap over patients, 1000 resamples, seed 0): :data:`COMPARISONS`. An arm
whose folder is finished is read, not rerun (its wall and CPU time kept in ``<folder>.bench.json``).

Writes ``bench/results/rsna-<device>.json``: sections ``generate``, ``calibration`` (every contrast tried, its
AUC, wall time, the chosen settings) and ``arms`` (each arm's figures, epoch, wall and CPU time; the paired
comparisons; the targets met or not; what was not measured). ``--cv-extra``, ``--sequence-extra``,
``--patients``, ``--slices``, ``--size`` and ``--results`` make the tiny set of the smoke test
(tests/bench/test_rsna.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULT = _report.RESULTS / "rsna-cpu.json"

# The synthetic set, fixed by calibration (2D pooled AUC of any in 0.65-0.80 on seed 0): do not change.
GENERATOR = {"n_patients": 500, "slices_per_series": 40, "size": 64, "seed": 0, "lesions": "context",
             "contrast": 10.0, "span": [3, 8], "rate": 0.5, "noise": 4.0}
# The 2D arm's settings, reused by every arm: the only packaged offline ImageNet weights (EfficientNet-Lite0), 32 px
# (a third of 64 px's cost), one epoch. Measured on the 2 cores: one 5-fold cv 200 s with the machine to itself
# (about 570 training images/s); 1,119 s while other jobs loaded it (load 4-5; 31-84 images/s per fold).
# Calibration (seed 0, pooled AUC of any): contrast 8 -> folds 0.66, 0.56, 0.54 (stopped after 3); 12 -> 0.828;
# 10 -> 0.718, chosen.
CV_2D = ["--arch", "tf_efficientnet_lite0", "--weights", "imagenet", "--offline", "--img-size", "32",
         "--epochs", "1", "--batch-size", "64", "--lr", "2e-3", "--warmup-epochs", "0", "--augment", "flip",
         "--no-tta", "--no-test-curves", "--no-tensorboard", "--group-similar", "0", "--folds", "5", "--seed", "0",
         "--threads", "2", "--workers", "2", "--no-progress"]


def _run(args: list, log: Path | None = None) -> float:
    """Run ``python -m ...args`` at low priority; its wall seconds. Output goes to ``log`` (or ours)."""
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cmd = ["nice", "-n", "10", sys.executable, "-m", *map(str, args)]
    with open(log, "a") if log else open(os.devnull, "w") as fh:
        done = subprocess.run(cmd, cwd=ROOT, stdout=fh if log else None, stderr=subprocess.STDOUT if log else None)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}" + (f" (log: {log})" if log else ""))
    return time.perf_counter() - start


def _finished(folder: Path) -> bool:
    path = Path(folder) / "results.json"
    return path.is_file() and json.loads(path.read_text()).get("complete", False)


def _timed_once(out: Path, args: list) -> dict:
    """Run ``args`` (writing the folder ``out``) unless ``out`` is finished; its wall and CPU seconds (this process's
    children, their DataLoader workers included), kept in ``<out>.bench.json`` so that a finished folder is read."""
    stamp = Path(out).with_suffix(".bench.json")
    if _finished(out):
        return {**(json.loads(stamp.read_text()) if stamp.is_file() else {"wall_s": None, "cpu_s": None}),
                "reused": True}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = _run(args, Path(out).with_suffix(".log"))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    timing = {"wall_s": round(wall, 1), "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime
                                                       - before.ru_stime, 1), "args": [str(x) for x in args]}
    stamp.write_text(json.dumps(timing) + "\n")
    return {**timing, "reused": False}


# run.json's place of each CV_2D flag that decides the figures (a finished folder is reused only when they agree)
CHECKED = {"--arch": ("arch",), "--weights": ("weights",), "--img-size": ("data", "img_size"),
           "--epochs": ("train", "epochs"), "--batch-size": ("train", "batch_size"), "--lr": ("train", "lr"),
           "--warmup-epochs": ("train", "warmup_epochs"), "--augment": ("train", "augment"), "--folds": ("folds",),
           "--seed": ("seed",), "--context": ("context",), "--smooth": ("smooth",)}


def settings_differ(run: Path, args: list) -> list[str]:
    """The :data:`CHECKED` flags of ``args`` (last one wins) whose value differs from ``run/run.json``'s."""
    config = json.loads((Path(run) / "run.json").read_text())["config"]
    wanted = {"--context": "0", "--smooth": "1"}
    wanted.update({str(f): str(v) for f, v in zip(args, args[1:]) if str(f) in CHECKED})
    out = []
    for flag, value in wanted.items():
        have = config
        for key in CHECKED[flag]:
            have = have.get(key) if isinstance(have, dict) else None
        try:
            same = float(value) == float(have)
        except (TypeError, ValueError):
            same = str(value) == str(have)
        if not same:
            out.append(f"{flag} {value} (run.json: {have})")
    return out


def generate(out: Path, settings: dict) -> dict:
    """Write the DICOM set under ``out/raw`` and prepare it into ``out/prepared``; the seconds of each step."""
    from smallct.datasets.synthetic_dicom import write_synthetic_rsna  # the bench imports smallct where used

    start = time.perf_counter()
    kw = dict(settings)
    info = write_synthetic_rsna(out / "raw", kw.pop("n_patients"), kw.pop("slices_per_series"), kw.pop("seed"),
                                kw.pop("size"), span=tuple(kw.pop("span")), **kw)
    written = time.perf_counter() - start
    prepare = _run(["smallct.prepare", "rsna", "--dicom", out / "raw", "--labels", info["labels"], "--out",
                    out / "prepared", "--size", str(settings["size"]), "--workers", "2", "--no-progress"],
                   out / "prepare.log")
    labels = np.loadtxt(info["labels"], delimiter=",", skiprows=1, dtype=str)
    any_rate = float(np.mean([v == "1" for i, v in labels if i.endswith("_any")]))
    return {"settings": settings, "files": len(info["files"]), "write_s": round(written, 1),
            "prepare_s": round(prepare, 1), "any_rate": round(any_rate, 4), "corrupt": info["corrupt"]}


def cv(prepared: Path, run: Path, extra: list | tuple = ()) -> dict:
    """One ``python -m smallct.cv`` with :data:`CV_2D` (and ``extra``): its figures, wall and CPU time and mean
    epoch time. A finished ``run`` with the same settings is read, not rerun; one with others is refused."""
    args = [*CV_2D, *map(str, extra)]
    if (Path(run) / "run.json").is_file() and (differ := settings_differ(run, args)):
        raise SystemExit(f"{run}: a run with other settings ({'; '.join(differ)}); give another --out")
    timing = _timed_once(run, ["smallct.cv", "--data", prepared, *args, "--out", run])
    res = json.loads((run / "results.json").read_text())
    pooled = res["pooled_oof"]
    history = np.genfromtxt(run / "history.csv", delimiter=",", names=True)
    return {"run": str(run), **timing, "auc_any": pooled["auc_any"], "mean_auc": pooled["mean_auc"],
            "weighted_log_loss": pooled["weighted_log_loss"], "n_images": res["n_images"],
            "epoch_s": round(float(np.mean(np.atleast_1d(history["seconds"]))), 2)}


# ---------------------------------------------------------------- the arms (same folds, same settings)

def arm_2d(prepared: Path, runs: Path, extra: list | tuple = ()) -> dict:
    """2D: every slice alone."""
    return cv(prepared, runs / "2d", extra)


def arm_context(prepared: Path, runs: Path, extra: list | tuple = ()) -> dict:
    """``--context 1``: slices i-1, i, i+1 as the three channels; run with ``--smooth 3``, so that one run gives
    both ``--context 1`` and ``--context 1 --smooth 3`` (:func:`arm_context_smooth`)."""
    return cv(prepared, runs / "context1", ["--context", "1", "--smooth", "3", *extra])


def arm_context_smooth(context: dict) -> dict:
    """``--context 1 --smooth 3``: the smoothed pooled figures of the ``--context 1`` run (no training of its own)."""
    sm = json.loads((Path(context["run"]) / "results.json").read_text())["smoothed"]
    return {**context, "arm": "context1+smooth3", "auc_any": sm["pooled_oof"]["auc_any"],
            "mean_auc": sm["pooled_oof"]["mean_auc"], "weighted_log_loss": sm["pooled_oof"]["weighted_log_loss"],
            "wall_s": 0.0, "cpu_s": 0.0, "note": f"the --context 1 run's out-of-fold probabilities smoothed over "
                                                 f"{sm['slices']} slices (no training of its own)"}


def arm_sequence(run: Path, strict: bool = False, features: str = "logits", extra: list | tuple = ()) -> dict:
    """The sequence model on the ``--context 1`` run: stacking (the run's fold models describe the training series)
    or ``--strict`` (inner models without the test fold); in ``RUN/sequence[-strict][-<features>]``."""
    name = "sequence" + ("-strict" if strict else "") + ("" if features == "logits" else f"-{features}")
    out = Path(run) / name
    args = ["smallct.sequence", run, "--out", out, "--features", features, "--no-progress", *extra]
    timing = _timed_once(out, args + (["--strict"] if strict else []))
    res = json.loads((out / "results.json").read_text())
    pooled = res["pooled_oof"]
    folds = _folds(out)  # epoch_s: a fold's seconds (its GRU's epochs, and its inputs) over its GRU epochs
    return {"run": str(out), **timing, "auc_any": pooled["auc_any"], "mean_auc": pooled["mean_auc"],
            "weighted_log_loss": pooled["weighted_log_loss"], "n_images": res["n_images"],
            "fold_s": round(float(np.mean([f["seconds"] for f in folds])), 2),
            "epoch_s": round(float(np.mean([f["seconds"] / max(len(f["history"]), 1) for f in folds])), 2)}


def _folds(run: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted((Path(run) / "folds").glob("r*_f*.json"))]


def oof_probs(run: Path, n: int, smooth: int = 1, dataset=None) -> np.ndarray:
    """Out-of-fold probabilities (N, 6) of a finished run or sequence folder (one repeat), rows in the prepared
    manifest's order; ``smooth`` > 1: each test fold smoothed over that many slices as ``--smooth`` does."""
    from smallct.engine.results import smooth_folds, stack_probs

    folds = _folds(run)
    if smooth > 1:  # as smallct.cv --smooth does: each test fold's series, never across folds
        folds = smooth_folds(folds, dataset, smooth)
    return stack_probs(folds, n, 1)[0]


def paired(y: np.ndarray, P_a: np.ndarray, P_b: np.ndarray, patients: np.ndarray, n_boot: int = 1000,
           seed: int = 0) -> dict:
    """B - A weighted log loss and mean AUC over labels, pooled out of fold, with a paired percentile bootstrap
    over patients (the same resampled patients for both): ``{figure: {a, b, difference, ci95, excludes_0}}``."""
    from smallct.evaluation.intervals import Units, paired_figures
    from smallct.evaluation.multilabel import per_label_auc, weighted_log_loss

    def figure(P):
        def f(idx):
            auc = [v for v in per_label_auc(y[idx], P[idx]).values() if not np.isnan(v)]
            return {"weighted_log_loss": weighted_log_loss(y[idx], P[idx]),
                    "mean_auc": float(np.mean(auc)) if auc else float("nan")}
        return f

    units = Units(len(y), np.asarray(patients), "patients")
    out = paired_figures(figure(P_a), figure(P_b), units, ["weighted_log_loss", "mean_auc"], n_boot, seed)
    for v in out.values():
        v["excludes_0"] = bool(v["ci95"][0] > 0 or v["ci95"][1] < 0)
    return out


# ---------------------------------------------------------------- results

def _save(section: str, payload, folder: Path | None = None) -> None:
    """Set one section of :data:`RESULT` (or of ``folder/rsna-cpu.json``), keeping the others."""
    import torch  # only for _report's device name

    path = Path(folder) / RESULT.name if folder else RESULT
    old = json.loads(path.read_text()) if path.is_file() else {}
    keep = {k: v for k, v in old.items() if k not in ("benchmark", "command", "date", "machine")}
    keep[section] = payload
    _report.write("rsna", torch.device("cpu"), keep, out=path.parent)


# the paired comparisons (A, B): B - A, over patients, on the same folds
COMPARISONS = [("2d", "context1"), ("context1", "context1+smooth3"), ("context1+smooth3", "sequence"),
               ("context1+smooth3", "sequence-strict"), ("context1+smooth3", "sequence-both")]
SEQUENCES = {"sequence": (False, "logits"), "sequence-both": (False, "both"), "sequence-strict": (True, "logits")}
COLUMNS = [("arm", "arm", ""), ("weighted_log_loss", "wLL", "{:.4f}"), ("mean_auc", "mean AUC", "{:.3f}"),
           ("auc_any", "AUC any", "{:.3f}"), ("epoch_s", "epoch s", "{:.1f}"), ("wall_s", "wall s", "{:.0f}"),
           ("cpu_s", "CPU s", "{:.0f}")]


def arms(data: Path, which: list[str], cv_extra: list, seq_extra: list, n_boot: int = 1000,
         results: Path | None = None) -> dict:
    """Every arm of ``which`` (in order; finished folders read), the paired comparisons of those measured, and
    the section ``arms`` of the results file (written after each arm, so that a stopped bench keeps what it has)."""
    from smallct.datasets.folder import read_manifest

    prepared, runs = data / "prepared", data / "runs"
    ds = read_manifest(prepared)
    old = json.loads((Path(results) / RESULT.name if results else RESULT).read_text()).get("calibration", {}) \
        if (Path(results) / RESULT.name if results else RESULT).is_file() else {}
    section = {"data": str(data), "cv": [*CV_2D, *cv_extra], "sequence_extra": seq_extra, "n_boot": n_boot,
               "load_avg_start": os.getloadavg(), "rows": [], "paired": [], "not_measured": []}
    rows: dict[str, dict] = {}

    def keep(name: str, row: dict) -> None:
        rows[name] = {"arm": name, **row}
        section["rows"] = list(rows.values())
        _save("arms", section, results)

    if "2d" in which:
        row = arm_2d(prepared, runs, cv_extra)
        if row.get("wall_s") is None:  # the calibration's run: its wall time is the calibration's
            row["wall_s"] = next((r["wall_s"] for r in old.get("tried", []) if r.get("run") == row["run"]), None)
        keep("2d", row)
    if "context1" in which:
        ctx = arm_context(prepared, runs, cv_extra)
        keep("context1", ctx)
        keep("context1+smooth3", {k: v for k, v in arm_context_smooth(ctx).items() if k != "arm"})
    for name, (strict, features) in SEQUENCES.items():
        if name in which and "context1" in rows:
            keep(name, arm_sequence(runs / "context1", strict, features, seq_extra))
    section["not_measured"] = [n for n in ["2d", "context1", *SEQUENCES] if n not in rows]

    y, n = ds.labels.astype(float), len(ds)
    probs = {}
    for name, row in rows.items():
        folder = Path(row["run"])
        probs[name] = oof_probs(folder, n, 3 if name == "context1+smooth3" else 1, ds)
        ids = json.loads(((folder.parent if name.startswith("sequence") else folder) / "run.json").read_text())
        if list(ids["folds"]["ids"]) != list(map(str, ds.ids)):
            raise SystemExit(f"{folder}: its rows are not {prepared}'s manifest's; run the arms on that folder")
        from smallct.evaluation.multilabel import weighted_log_loss

        if not np.isclose(weighted_log_loss(y, probs[name]), row["weighted_log_loss"], rtol=1e-6):
            raise SystemExit(f"{folder}: the out-of-fold probabilities read here do not give its pooled figure")
    for a, b in COMPARISONS:
        if a in probs and b in probs:
            figs = paired(y, probs[a], probs[b], ds.groups, n_boot, 0)
            section["paired"].append({"a": a, "b": b, "difference": "B - A", **figs})
    timed = [r for r in rows.values() if r.get("cpu_s") is not None]
    section["cpu_s_total"] = round(sum(r["cpu_s"] for r in timed), 1)
    section["cpu_s_counted"] = [r["arm"] for r in timed]
    section["wall_s_total"] = round(sum(r["wall_s"] or 0 for r in rows.values()), 1)
    section["load_avg_end"] = os.getloadavg()
    by = {(c["a"], c["b"]): c for c in section["paired"]}
    section["targets"] = {
        "context1 beats 2D (lower wLL and higher mean AUC, paired CI excluding 0)": _beats(by.get(("2d", "context1"))),
        "sequence (stacking) beats context1+smooth3": _beats(by.get(("context1+smooth3", "sequence"))),
        "sequence (strict) beats context1+smooth3": _beats(by.get(("context1+smooth3", "sequence-strict")))}
    _save("arms", section, results)
    return section


def _beats(c: dict | None) -> str | bool:
    """B beats A on both figures: lower weighted log loss and higher mean AUC, each interval excluding 0."""
    if c is None:
        return "not measured"
    return bool(c["weighted_log_loss"]["ci95"][1] < 0 and c["mean_auc"]["ci95"][0] > 0)


def paired_table(section: dict) -> str:
    rows = [{"pair": f"{c['b']} - {c['a']}", **{f"{k}_{x}": v for k in ("weighted_log_loss", "mean_auc")
                                                 for x, v in (("d", c[k]["difference"]), ("lo", c[k]["ci95"][0]),
                                                              ("hi", c[k]["ci95"][1]), ("ex", c[k]["excludes_0"]))}}
            for c in section["paired"]]
    return _report.table(rows, [("pair", "B - A", ""), ("weighted_log_loss_d", "d wLL", "{:+.4f}"),
                                ("weighted_log_loss_lo", "lo", "{:+.4f}"), ("weighted_log_loss_hi", "hi", "{:+.4f}"),
                                ("weighted_log_loss_ex", "excl 0", ""), ("mean_auc_d", "d mean AUC", "{:+.4f}"),
                                ("mean_auc_lo", "lo", "{:+.4f}"), ("mean_auc_hi", "hi", "{:+.4f}"),
                                ("mean_auc_ex", "excl 0", "")])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=["generate", "calibrate", "arms", "all"])
    p.add_argument("--out", type=Path, required=True, help="work folder (raw/, prepared/, runs/)")
    p.add_argument("--contrast", type=float, help="calibration only: this contrast instead of GENERATOR's")
    p.add_argument("--epochs", type=int, help="calibration only: this many epochs instead of CV_2D's")
    p.add_argument("--folds", type=int, help="calibration only: a timing run with fewer folds")
    p.add_argument("--arms", default="2d,context1,sequence,sequence-both,sequence-strict",
                   help="arms/all: which arms, in this order (strict last: it costs about 2.5 cv runs)")
    p.add_argument("--cv-extra", default="", help="arms/all: flags added to every cv (smoke tests: '--folds 2')")
    p.add_argument("--sequence-extra", default="", help="arms/all: flags added to every smallct.sequence")
    p.add_argument("--n-boot", type=int, default=1000, help="arms/all: paired bootstrap resamples (seed 0)")
    p.add_argument("--patients", type=int, help="generate/all: this many patients (smoke tests)")
    p.add_argument("--slices", type=int, help="generate/all: slices per series (smoke tests)")
    p.add_argument("--size", type=int, help="generate/all: image size (smoke tests)")
    p.add_argument("--results", type=Path, help="the folder of rsna-cpu.json (default bench/results)")
    args = p.parse_args(argv)
    settings = dict(GENERATOR, **({"contrast": args.contrast} if args.contrast is not None else {}))
    settings.update({k: v for k, v in (("n_patients", args.patients), ("slices_per_series", args.slices),
                                       ("size", args.size)) if v is not None})
    data = args.out / f"c{settings['contrast']:g}"
    if args.phase in ("arms", "all"):
        if args.phase == "all" and not (data / "prepared" / "manifest.csv").is_file():
            _save("generate", generate(data, settings), args.results)
        section = arms(data, args.arms.split(","), shlex.split(args.cv_extra),
                       shlex.split(args.sequence_extra), args.n_boot, args.results)
        print(_report.table(section["rows"], COLUMNS))
        print(paired_table(section))
        for k, v in section["targets"].items():
            print(f"target {k}: {v}")
        return
    if args.phase == "generate":
        row = generate(data, settings)
        print(_report.table([row], [("files", "files", ""), ("write_s", "write s", "{:.1f}"),
                                    ("prepare_s", "prepare s", "{:.1f}"), ("any_rate", "any", "{:.3f}")]))
        _save("generate", row, args.results)
        return
    extra = ((["--epochs", str(args.epochs)] if args.epochs else [])
             + (["--folds", str(args.folds)] if args.folds else []))
    row = {"contrast": settings["contrast"], "generator": settings, "cv": CV_2D + extra,
           **cv(data / "prepared", data / f"runs/2d{'-'.join([''] + extra[1::2])}", extra)}
    old = json.loads(RESULT.read_text()).get("calibration", {}) if RESULT.is_file() else {}
    tried = [r for r in old.get("tried", []) if (r["generator"], r["cv"]) != (row["generator"], row["cv"])] + [row]
    print(_report.table(tried, [("contrast", "contrast", "{:g}"), ("wall_s", "wall s", "{:.0f}"),
                                ("auc_any", "AUC any", "{:.3f}"), ("mean_auc", "mean AUC", "{:.3f}"),
                                ("weighted_log_loss", "wLL", "{:.4f}")]))
    from smallct.datasets.rsna import LABELS, label_weights  # what the loss weighs (#30 item 4)

    row["loss_label_weights"] = dict(zip(LABELS, label_weights(LABELS) or [1.0] * len(LABELS)))
    _save("calibration", {"target": "2D pooled out-of-fold AUC of any in 0.65-0.80 on seed 0",
                          "chosen": {"generator": GENERATOR, "cv": CV_2D}, "tried": tried})


if __name__ == "__main__":
    main()
