"""Shared test fixtures: paths to the real data (never copied into the repo), small generated sets, one torch
thread and a private cache for every test."""

from __future__ import annotations

import os
from pathlib import Path

# No network beyond loopback, ever: weights come from the caches or a test's own 127.0.0.1 server (a test that
# downloads lifts this for itself). Set before smallct and huggingface_hub are imported, and inherited by the
# commands the tests start.
os.environ["SMALLCT_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # mlflow 3.x sends usage telemetry by default (read on import)

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from smallct import cv, prepare
from smallct.config.run import CVConfig, DataConfig, TrainConfig
from smallct.datasets.synthetic_dicom import write_synthetic_rsna
from smallct.datasets.phantom import write_phantom_png_set
from smallct.engine.cv import run_cv

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op torch thread for the whole session: the tests' models are tiny, and on a shared,
    oversubscribed CPU two OpenMP threads spin and run 10-20x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test session decodes into its own cache folder, never the user's."""
    monkeypatch.setenv("SMALLCT_CACHE", str(tmp_path_factory.getbasetemp() / "smallct-cache"))


def _data_path(env: str, default: Path) -> Path:
    return Path(os.environ.get(env) or default)


def require(path: Path, what: str) -> Path:
    """The path, or a skip outside CI; in CI (CI=true) a missing data folder is a failure, never a skip."""
    if path.exists():
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{what} not found at {path} (set the environment variable or lay shared/ beside the repo)")
    pytest.skip(f"{what} not found at {path}")


@pytest.fixture(scope="session")
def head_ct_dir() -> Path:
    """The real Kaggle Head CT set: $SMALLCT_HEAD_CT, else ../shared/data/head_ct."""
    return require(_data_path("SMALLCT_HEAD_CT", SHARED_DATA / "head_ct"), "Head CT set")


@pytest.fixture(scope="session")
def rsna_sample_dir() -> Path:
    """One real RSNA slice: $SMALLCT_RSNA_SAMPLE, else ../shared/data/rsna_sample."""
    return require(_data_path("SMALLCT_RSNA_SAMPLE", SHARED_DATA / "rsna_sample"), "RSNA sample")


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A small synthetic phantom PNG set (40 images, mixed PNG modes, labels.csv like the Head CT set)."""
    return write_phantom_png_set(tmp_path_factory.mktemp("phantom"), n=40, seed=0)


def _finished_run(phantom_dir: Path, tmp_path_factory, name: str, tta: bool) -> Path:
    """A smallct.cv run folder on ``phantom_dir``: resnet18 from random init, 32 px, 2 folds, 1 epoch."""
    out = tmp_path_factory.mktemp(name) / "run"
    cfg = CVConfig(arch="resnet18", weights="none", folds=2, seed=0, device="cpu", out=out, workers=1,
                   data=DataConfig(data=phantom_dir, img_size=32), train=TrainConfig(epochs=1, batch_size=8, tta=tta))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMALLCT_CACHE", str(tmp_path_factory.getbasetemp() / "smallct-cache"))
        run_cv(cfg, progress=False, log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def small_run(phantom_dir, tmp_path_factory, one_thread) -> Path:
    """A finished run without TTA (applied by the tests of predict, explain and export)."""
    return _finished_run(phantom_dir, tmp_path_factory, "small-run", tta=False)


@pytest.fixture(scope="session")
def small_tta_run(phantom_dir, tmp_path_factory, one_thread) -> Path:
    """:func:`small_run` evaluated with the left-right mirror, as smallct.cv does by default (``tta`` in run.json)."""
    return _finished_run(phantom_dir, tmp_path_factory, "small-tta-run", tta=True)


def write_easy_set(folder: Path, n: int = 40, seed: int = 0) -> Path:
    """A PNG set any random network separates: class 0 dark noise, class 1 a bright disc on dark noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:48, :48]
    rows = []
    for i in range(n):
        label = i % 2
        img = rng.integers(0, 40, (48, 48)).astype(np.uint8)
        if label:
            cy, cx = rng.integers(16, 32, 2)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < 100] = 230
        img[0, 0] = 255  # keep the crop-to-body step from cropping to the disc
        Image.fromarray(img).save(folder / f"{i:03d}.png")
        rows.append(f"{i},{label}")
    (folder / "labels.csv").write_text("id, hemorrhage\n" + "\n".join(rows) + "\n")
    return folder


@pytest.fixture
def easy_set(tmp_path) -> Path:
    """:func:`write_easy_set` in this test's folder (used by the few-shot and learning-curve tests)."""
    return write_easy_set(tmp_path / "easy")


# A sequence model's runs (tests/engine/test_sequence.py, test_stacking.py)
RSNA_CV = ["--task", "multilabel", "--arch", "resnet18", "--weights", "none", "--img-size", "16", "--batch-size", "16",
           "--augment", "none", "--folds", "3", "--workers", "1", "--threads", "1", "--no-test-curves",
           "--no-tensorboard", "--no-progress"]


def permute_labels(labels_csv, seed: int = 0) -> None:
    """Give every image the six labels of another image, drawn at random (stage_2_train.csv long format)."""
    table = pd.read_csv(labels_csv)
    image, subtype = table["ID"].str.rsplit("_", n=1).str[0], table["ID"].str.rsplit("_", n=1).str[1]
    ids = sorted(set(image))
    other = dict(zip(ids, np.random.default_rng(seed).permutation(ids)))
    table["ID"] = [f"{other[i]}_{s}" for i, s in zip(image, subtype)]
    table.to_csv(labels_csv, index=False)


@pytest.fixture(scope="session")
def rsna_permuted_runs(tmp_path_factory, one_thread):
    """A synthetic RSNA set (12 patients x 6 slices, prepared at 16 px) whose labels are PERMUTED across slices (no
    image says anything of its labels), and two finished 3-fold cv runs on it: ``permuted`` (resnet18 trained long
    enough to memorise its training slices) and ``tiny`` (one epoch); the sequence model's tests."""
    root = tmp_path_factory.mktemp("sequence")
    synthetic = write_synthetic_rsna(root / "dicom", n_patients=12, slices_per_series=6, seed=0)
    permute_labels(synthetic["labels"])
    data = ["--data", str(root / "prepared")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMALLCT_CACHE", str(tmp_path_factory.getbasetemp() / "smallct-cache"))
        assert prepare.main(["rsna", "--dicom", str(synthetic["root"]), "--labels", str(synthetic["labels"]),
                             "--out", str(root / "prepared"), "--size", "16", "--workers", "1", "--no-progress"]) == 0
        # long enough, at a high rate, without augmentation, for resnet18 to memorise its training slices' labels
        assert cv.main([*data, *RSNA_CV, "--epochs", "12", "--lr", "0.003", "--no-tta", "--out",
                        str(root / "permuted")]) == 0
        assert cv.main([*data, *RSNA_CV, "--epochs", "1", "--out", str(root / "tiny")]) == 0
    return {"permuted": root / "permuted", "tiny": root / "tiny", "root": root}
