"""One-at-a-time screens of the fine-tuning recipe (issue #17): each of smallct 0.2's settings put back alone.

    python bench/ablation.py                             # fold seeds 0 and 1, one repeat, every variant
    python bench/ablation.py --seeds 2,3                 # two more fold draws (rows accumulate)
    python bench/ablation.py --variants lr,freeze        # some of them
    python bench/ablation.py --epochs 1 --folds 2 --img-size 64 --seeds 0   # a smoke run (the table says so)

For every fold seed, ``smallct.cv --params lite0_finetune`` (the base: the plain script's training settings,
smallct's default for pretrained backbones) runs into ``RUNS/base-<tag>``, then each variant, the base with
one setting changed back to smallct 0.2's recipe (``lite0_finetune_v02``), into ``RUNS/<variant>-<tag>``,
with the same seed and so the same folds. ``smallct.compare``'s machinery pairs each variant with the base
(variant - base: a negative difference means that setting of the 0.2 recipe costs accuracy): the paired
difference with its interval over the groups the folds keep whole, Nadeau-Bengio with ``--repeats``, and the
difference per fold draw. The summary of each variant is over distinct fold draws (keyed as in
``bench/plain_recipe.py``: each (seed, repeat) its own draw). Writes
``bench/results/ablation-<device>.json``, keeping earlier rows of the same settings; finished folds resume
from ``--runs``.

The head is not a variant: smallct and the plain script both put a fresh classifier on the ImageNet backbone
with timm's ``reset_classifier`` (PyTorch's default init), so there is nothing left to ablate there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

# name: (recipe, flags over it, what it changes). Each is smallct 0.2's value of one setting of lite0_finetune.
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "lr": ("lite0_finetune", ["--lr", "1e-3"], "learning rate 1e-3 (base 5e-4)"),
    "warmup": ("lite0_finetune", ["--warmup-epochs", "2"], "2 linear warm-up epochs (base 0)"),
    "freeze": ("lite0_finetune", ["--freeze-epochs", "1"], "head alone for the first epoch (base 0)"),
    "backbone": ("lite0_finetune", ["--backbone-lr-mult", "0.5"], "backbone at half the learning rate (base 1)"),
    "v02": ("lite0_finetune_v02", [], "all four together: smallct 0.2's recipe"),
}
BASE = "lite0_finetune"
SHARED = {"--data", "--params", "--seed", "--repeats", "--folds", "--epochs", "--img-size", "--device", "--out",
          "--lr", "--warmup-epochs", "--freeze-epochs", "--backbone-lr-mult"}


def summary(rows: list[dict]) -> list[dict]:
    """One line per variant: its paired differences over distinct fold draws (``_report.over_draws``)."""
    out = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        draws = _report.over_draws(mine)
        out.append({"variant": name, "what": mine[0]["what"], "n_draws": draws["n_draws"], "mean": draws["mean"],
                    "min": draws["min"], "max": draws["max"], "t_lo": draws.get("t_ci95", [None])[0],
                    "t_hi": draws.get("t_ci95", [None, None])[1], "draws": draws["draws"],
                    "auc_diff": float(np.mean([r["variant_auc"] - r["base_auc"] for r in mine]))})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/ablation.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=_report.default_data(), help="Head CT folder (default: shared)")
    p.add_argument("--seeds", default="0,1", help="fold seeds, comma-separated (default 0,1)")
    p.add_argument("--repeats", type=int, default=1, help="repeats of the CV per seed (default 1)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=12, help="every run (default 12, the recipe's)")
    p.add_argument("--img-size", type=int, default=192, help="every run (default 192, the recipe's)")
    p.add_argument("--smallct-args", default="", help="more smallct.cv flags, e.g. '--no-progress'")
    p.add_argument("--runs", type=Path, default=Path("runs/ablation"), help="run folders (kept; resumable)")
    p.add_argument("--out", type=Path, default=_report.RESULTS, help="folder of the JSON result")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    extra = args.smallct_args.split()
    shared = sorted(SHARED & {a.split("=")[0] for a in extra})
    if shared:
        p.error(f"--smallct-args may not set {', '.join(shared)}: the benchmark sets them")
    from smallct.analysis.compare import compare_runs
    from smallct.cv import main as smallct_cv

    device = torch.device("cpu")
    info, rows = _report.machine(device), []
    settings = {"folds": args.folds, "epochs": args.epochs, "img_size": args.img_size, "base": BASE,
                "smallct_args": " ".join(a for a in extra if a != "--no-progress")}

    def run(name: str, recipe: str, flags: list[str], seed: int) -> tuple[Path, float]:
        folder = args.runs / f"{name}-seed{seed}-r{args.repeats}-f{args.folds}-e{args.epochs}-s{args.img_size}"
        start = time.perf_counter()
        code = smallct_cv(["--data", str(args.data), "--params", recipe, "--seed", str(seed), "--repeats",
                           str(args.repeats), "--folds", str(args.folds), "--epochs", str(args.epochs), "--img-size",
                           str(args.img_size), "--device", "cpu", "--out", str(folder), *flags, *extra])
        if code:
            raise SystemExit(code)
        return folder, time.perf_counter() - start

    for seed in [int(s) for s in args.seeds.split(",")]:
        base, base_wall = run("base", BASE, [], seed)
        for name in names:
            recipe, flags, what = VARIANTS[name]
            folder, wall = run(name, recipe, flags, seed)
            res = compare_runs(base, folder)  # B - A = variant - base
            nb = (res.get("nadeau_bengio") or {}).get("accuracy", {})
            draws = _report.draw_differences(res, seed)
            rows.append({"variant": name, "what": what, "flags": " ".join(["--params", recipe, *flags]),
                         "seed": seed, "repeats": args.repeats, "base_acc": res["accuracy"]["a"],
                         "variant_acc": res["accuracy"]["b"], "diff": res["accuracy"]["difference"],
                         "lo": res["accuracy"]["ci95"][0], "hi": res["accuracy"]["ci95"][1],
                         "nb_lo": nb.get("ci95", [None])[0], "nb_hi": nb.get("ci95", [None, None])[1],
                         "base_auc": res["roc_auc"]["a"], "variant_auc": res["roc_auc"]["b"],
                         "base_wall": base_wall, "variant_wall": wall, "draws": list(draws),
                         "draw_diffs": {str(k): v for k, v in draws.items()}, "sentence": res["sentence"],
                         "settings": settings, "date": time.strftime("%Y-%m-%d %H:%M"), "load_avg": info["load_avg"]})
            print(f"  seed {seed} {name}: {res['sentence']}", flush=True)
    result_file = args.out / f"ablation-{device.type}.json"
    kept, commands = _report.earlier(result_file, rows, settings, lambda r: (r["variant"], r["seed"], r["repeats"]))
    commands = commands + [
        f"python {' '.join(sys.argv)}   # {time.strftime('%Y-%m-%d %H:%M:%S')}"]
    rows = sorted(kept + rows, key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"], r["repeats"]))
    print(_report.table(rows, [("variant", "variant", ""), ("seed", "seed", ""), ("repeats", "rep", ""),
                               ("base_acc", "base acc", "{:.3f}"), ("variant_acc", "variant acc", "{:.3f}"),
                               ("diff", "diff", "{:+.3f}"), ("lo", "CI lo", "{:+.3f}"), ("hi", "CI hi", "{:+.3f}"),
                               ("nb_lo", "NB lo", "{:+.3f}"), ("nb_hi", "NB hi", "{:+.3f}"),
                               ("base_auc", "base AUC", "{:.3f}"), ("variant_auc", "variant AUC", "{:.3f}")]))
    lines = summary(rows)
    print("\nover distinct fold draws (variant - base; negative: the 0.2 setting costs accuracy)")
    print(_report.table(lines, [("variant", "variant", ""), ("what", "what", ""), ("n_draws", "draws", ""),
                                ("mean", "mean diff", "{:+.3f}"), ("min", "min", "{:+.3f}"), ("max", "max", "{:+.3f}"),
                                ("t_lo", "t lo", "{:+.3f}"), ("t_hi", "t hi", "{:+.3f}"),
                                ("auc_diff", "AUC diff", "{:+.4f}")]))
    if args.epochs != 12 or args.img_size != 192 or args.folds != 5:
        print("(not the issue's settings: a shorter run)")
    path = _report.write("ablation", device, {"rows": rows, "summary": lines, "commands": commands}, args.out, info)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
