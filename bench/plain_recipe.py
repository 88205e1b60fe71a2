"""A plain-recipe yardstick: a 90-line timm script against ``smallct.cv --params lite0_finetune`` on the same folds.

    python bench/plain_recipe.py                           # seed 0, one repeat, the Head CT set
    python bench/plain_recipe.py --seeds 0,1 --repeats 3   # "never lose": both seeds, repeated CV
    python bench/plain_recipe.py --epochs 1 --folds 2 --img-size 64   # a smoke run (the table says so)

For every seed, first ``smallct.cv`` runs (``--params lite0_finetune``, the given ``--seed``, ``--repeats``,
``--folds``) into ``RUNS/smallct-<tag>``; then the plain script trains on exactly that run's fold
assignment (read from its ``run.json``; it takes nothing else from smallct) and its out-of-fold
predictions are written beside as ``RUNS/plain-<tag>``, a run folder ``smallct.compare`` pairs with
smallct's. The plain script is written out below with issue #17's settings, torchvision and timm only:
``tf_efficientnet_lite0`` with the packaged ImageNet weights mapped in order, ``reset_classifier(2)``, the
whole PNG to RGB, ``resize((S, S))`` (stretched, no crop), mean = std = 0.5, torchvision v2
``RandomHorizontalFlip`` + ``RandomAffine(10, translate 0.05, scale 0.9-1.1)`` per image in a ``DataLoader``,
AdamW lr 5e-4 wd 0.05, ``CosineAnnealingLR`` over all steps, batch 32, 12 epochs, flip TTA, threshold 0.5.

Prints both arms' accuracy and AUC, the paired difference (smallct - plain) with its interval over the
groups the folds keep whole (and the Nadeau-Bengio interval with repeats), wall times and seconds per
epoch (smallct's: the sum of its folds' seconds, which include its per-epoch test-fold curves; its wall
adds decoding and the duration estimate); writes ``bench/results/plain_recipe-<device>.json``, keeping the
rows of other seeds measured earlier with the same settings (so ``--seeds 1`` adds to a ``--seeds 0`` file;
the mean paired difference is over all rows). Finished folds of either arm are kept: the same command resumes.

Fold draws: ``--seed S --repeats R`` draws R folds of its own (``smallct.data.seeds``: repeat 0 shuffles with S,
as every smallct did; repeats >= 1 with a value derived from (S, r); smallct <= 0.3 used S + r, so that seed 0's
repeats 1-2 were seed 1's repeats 0-1). A draw is keyed by the ``random_state`` it shuffled with, the same key
under both schemes. Every row records its draws and its per-draw paired differences; the summary is over
distinct draws (a draw measured in two rows, with other training seeds, counts once, as their mean), with the
spread of the per-draw differences.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

# Only the location of the packaged weights file comes from smallct (the plain script would name the path),
# and each fold's training seed (the one smallct's fold model of the same repeat and fold trains with).
from smallct.data.seeds import fit_seed  # noqa: E402
from smallct.models.weights import resolve_weights  # noqa: E402

ARCH = "tf_efficientnet_lite0"
SHARED = {"--seed", "--repeats", "--folds", "--out", "--data", "--params", "--epochs", "--img-size", "--device"}


class PlainImages(Dataset):
    """PNG -> RGB -> resize((S, S)) once, then per-image torchvision v2 transforms."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, torch.as_tensor(labels), transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def load_plain(files: list[Path], size: int) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB").resize((size, size)))).permute(2, 0, 1)
                        for f in files])


def pretrained_lite0() -> torch.nn.Module:
    model = timm.create_model(ARCH, pretrained=False)
    state = torch.load(resolve_weights(ARCH, "imagenet").path, map_location="cpu", weights_only=True)
    src = [v for k, v in state.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(src) == len(dst), "weights file and model differ in tensor count"
    model.load_state_dict(dict(zip(dst, src)), strict=False)
    model.reset_classifier(2)
    return model


def plain_fold(images, labels, train, test, args, seed: int) -> np.ndarray:
    """Train the plain recipe on ``train``, return P(hemorrhage) of ``test`` (flip TTA)."""
    torch.manual_seed(seed)
    norm = [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)]
    augment = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomAffine(10, translate=(0.05, 0.05), scale=(0.9, 1.1)),
                          *norm])
    loader = DataLoader(PlainImages(images[train], labels[train], augment), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    model = pretrained_lite0()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * len(loader))
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(args.epochs):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
            sched.step()
    model.eval()
    x = v2.Compose(norm)(images[test])
    with torch.no_grad():
        p = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    return p[:, 1].numpy()


def run_plain(smallct_dir: Path, plain_dir: Path, data: Path, args, seed: int) -> float:
    """The plain arm on the smallct run's folds; a run folder of its out-of-fold predictions. Wall seconds."""
    record = json.loads((smallct_dir / "run.json").read_text())
    ids = [str(i) for i in record["folds"]["ids"]]
    assignment = np.asarray(record["folds"]["assignment"])
    table = pd.read_csv(data / "labels.csv", dtype=str, skipinitialspace=True)
    table.columns = [c.strip() for c in table.columns]
    label_of = {str(int(i)).zfill(3): int(v) for i, v in zip(table.iloc[:, 0], table.iloc[:, 1])}
    labels = np.array([label_of[i] for i in ids])
    files = [data / f"{i}.png" for i in ids]
    images = load_plain(files, args.img_size)
    parts = plain_dir / "folds"
    parts.mkdir(parents=True, exist_ok=True)
    start, rows = time.perf_counter(), []
    for r in range(assignment.shape[0]):
        for k in range(int(assignment.max()) + 1):
            done = parts / f"r{r}_f{k}.npy"
            test = np.flatnonzero(assignment[r] == k)
            if not done.exists():
                prob = plain_fold(images, labels, np.flatnonzero(assignment[r] != k), test, args,
                                  fit_seed(seed, r, k))
                np.save(done, prob)
                print(f"  plain seed {seed} repeat {r} fold {k}: accuracy "
                      f"{((prob >= 0.5) == labels[test]).mean():.3f}", flush=True)
            prob = np.load(done)
            rows += [{"id": ids[i], "file": files[i].name, "label": labels[i], "prob": float(p), "pred": int(p >= 0.5),
                      "fold": k, "repeat": r} for i, p in zip(test, prob)]
    wall = time.perf_counter() - start
    plain_record = {**record, "arch": f"{ARCH} (plain timm script)", "plain_recipe": vars(args) | {"data": str(data)}}
    (plain_dir / "run.json").write_text(json.dumps(plain_record, indent=1, default=str))
    pd.DataFrame(rows).to_csv(plain_dir / "oof.csv", index=False)
    return wall


def with_draws(row: dict) -> dict:
    """A row of an earlier file without per-draw differences: with one repeat, its difference is its draw's."""
    if "draw_diffs" not in row and row["repeats"] == 1:
        row = {**row, "draws": [row["seed"]], "draw_diffs": {str(row["seed"]): row["diff"]}}
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/plain_recipe.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=_report.default_data(), help="Head CT folder (default: shared)")
    p.add_argument("--seeds", default="0", help="fold seeds, comma-separated (default 0)")
    p.add_argument("--repeats", type=int, default=1, help="repeats of the CV per seed (default 1)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=12, help="both arms (default 12, the recipe's)")
    p.add_argument("--img-size", type=int, default=192, help="both arms (default 192, the recipe's)")
    p.add_argument("--params", default="lite0_finetune", help="smallct's recipe (default lite0_finetune)")
    p.add_argument("--smallct-args", default="", help="more smallct.cv flags, e.g. '--threads 2'")
    p.add_argument("--runs", type=Path, default=Path("runs/plain_recipe"), help="run folders (kept; resumable)")
    p.add_argument("--out", type=Path, default=_report.RESULTS, help="folder of the JSON result")
    args = p.parse_args(argv)
    extra = args.smallct_args.split()
    shared = sorted(SHARED & {a.split("=")[0] for a in extra})
    if shared:
        p.error(f"--smallct-args may not set {', '.join(shared)}: the benchmark sets them for both arms")
    from smallct.analysis.compare import compare_runs
    from smallct.cv import main as smallct_cv

    device = torch.device("cpu")
    info, rows, seeds = _report.machine(device), [], [int(s) for s in args.seeds.split(",")]
    # what the figures depend on (--no-progress does not change them)
    kept_args = [a for a in extra if a != "--no-progress"]
    settings = {"folds": args.folds, "epochs": args.epochs, "img_size": args.img_size, "params": args.params,
                "smallct_args": " ".join(kept_args)}
    for seed in seeds:
        tag = f"seed{seed}-r{args.repeats}-f{args.folds}-e{args.epochs}-s{args.img_size}"
        ours, plain = args.runs / f"smallct-{tag}", args.runs / f"plain-{tag}"
        start = time.perf_counter()
        code = smallct_cv(["--data", str(args.data), "--params", args.params, "--seed", str(seed), "--repeats",
                           str(args.repeats), "--folds", str(args.folds), "--epochs", str(args.epochs), "--img-size",
                           str(args.img_size), "--device", "cpu", "--out", str(ours), *extra])
        if code:
            return code
        ours_wall = time.perf_counter() - start
        plain_wall = run_plain(ours, plain, args.data, args, seed)
        res = compare_runs(plain, ours)  # B - A = smallct - plain
        ours_folds = json.loads((ours / "results.json").read_text())["seconds_all_folds"]  # training + evaluation
        fits = args.repeats * args.folds * args.epochs
        nb = res.get("nadeau_bengio") or {}
        draws = _report.draw_differences(res, seed)
        rows.append({"seed": seed, "repeats": args.repeats, "plain_acc": res["accuracy"]["a"],
                     "smallct_acc": res["accuracy"]["b"], "diff": res["accuracy"]["difference"],
                     "lo": res["accuracy"]["ci95"][0], "hi": res["accuracy"]["ci95"][1],
                     "nb_lo": nb.get("accuracy", {}).get("ci95", [None])[0],
                     "nb_hi": nb.get("accuracy", {}).get("ci95", [None, None])[1],
                     "plain_auc": res["roc_auc"]["a"], "smallct_auc": res["roc_auc"]["b"],
                     "plain_s_epoch": plain_wall / fits, "smallct_s_epoch": ours_folds / fits,
                     "plain_wall": plain_wall, "smallct_wall": ours_wall, "smallct_fold_seconds": ours_folds,
                     "draws": list(draws), "draw_diffs": {str(k): v for k, v in draws.items()},
                     "sentence": res["sentence"], "settings": settings, "date": time.strftime("%Y-%m-%d %H:%M"),
                     "cpu": info["cpu"], "load_avg": info["load_avg"]})
        shutil.copy(ours / "run.json", plain / "smallct_run.json")
    result_file = args.out / f"plain_recipe-{device.type}.json"
    kept, commands = _report.earlier(result_file, rows, settings, lambda r: (r["seed"], r["repeats"]))
    kept = [with_draws(r) for r in kept]
    commands = commands + [
        f"python {' '.join(sys.argv)}   # seeds {args.seeds}, {time.strftime('%Y-%m-%d %H:%M:%S')}"]
    rows = kept + rows
    print(_report.table(rows, [("seed", "seed", ""), ("repeats", "rep", ""), ("plain_acc", "plain acc", "{:.3f}"),
                               ("smallct_acc", "smallct acc", "{:.3f}"), ("diff", "diff", "{:+.3f}"),
                               ("lo", "CI lo", "{:+.3f}"), ("hi", "CI hi", "{:+.3f}"), ("nb_lo", "NB lo", "{:+.3f}"),
                               ("nb_hi", "NB hi", "{:+.3f}"), ("plain_auc", "plain AUC", "{:.3f}"),
                               ("smallct_auc", "smallct AUC", "{:.3f}"), ("plain_s_epoch", "plain s/ep", "{:.1f}"),
                               ("smallct_s_epoch", "smallct s/ep", "{:.1f}")]))
    mean = float(np.mean([r["diff"] for r in rows]))
    print(f"mean paired difference smallct - plain over the {len(rows)} rows above: {mean:+.3f} "
          f"({'never loses' if mean >= 0 else 'LOSES'}); per-epoch time ratio smallct/plain "
          f"{np.mean([r['smallct_s_epoch'] / r['plain_s_epoch'] for r in rows]):.2f}")
    draws = _report.over_draws(rows)
    spread = (f", sd {draws['sd']:.3f}, t-interval over draws {draws['t_ci95'][0]:+.3f} to {draws['t_ci95'][1]:+.3f}"
              if "sd" in draws else "")
    print(f"over the {draws['n_draws']} distinct fold draws {draws['draws']}: mean {draws['mean']:+.3f} "
          f"(per draw {draws['min']:+.3f} to {draws['max']:+.3f}{spread}); smallct did not lose on "
          f"{draws['draws_not_lost']} of {draws['n_draws']}"
          + (f"; draws {draws['counted_twice']} were in two rows and count once" if draws["counted_twice"] else ""))
    if args.epochs != 12 or args.img_size != 192 or args.folds != 5:
        print("(not the issue's settings: a shorter run)")
    path = _report.write("plain_recipe", device, {"rows": rows, "mean_difference": mean, "over_draws": draws,
                                                   "commands": commands}, args.out, info)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
