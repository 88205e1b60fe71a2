"""Export a run's fold models for use outside Python, as ONNX or TorchScript (``python -m smallct.export``).

The exported graph carries the model's whole input contract except decoding:

* input ``image``: float32 (N, 3, S, S), RGB values 0..255 of an image prepared as
  :func:`smallct.io.images.preprocess` does (crop the black border, pad to a square, resize to S px; a
  DICOM slice is first turned into RGB with the run's CT windows, :func:`smallct.io.dicom.to_rgb`);
* output ``probabilities``: float32 (N, C), softmax over the classes, or a sigmoid per label for a
  multi-label run; the normalisation (mean, std) and the activation are inside the graph.

By default every fold model of the run goes into the one graph and their probabilities are
averaged, as :mod:`smallct.apply.predict` does; ``--fold r0_f1`` exports a single fold model. A JSON beside
the file (``model.onnx`` -> ``model.onnx.json``) records the contract: size, resize, crop, windows,
classes, task, the fold models inside.

ONNX goes through torch's TorchScript-based exporter (``dynamo=False``): the newer exporter needs the
``onnxscript`` package and gives nothing more for these plain CNNs. ``pip install smallct[export]``
adds ``onnx`` (graph check) and ``onnxruntime`` (the export is run once and compared with torch).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from smallct.apply.predict import load_models, select_checkpoints
from smallct.engine.run_folder import Run

FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}


class Deployable(nn.Module):
    """Fold models with smallct's normalisation and output activation built in, probabilities averaged.

    ``forward(image)``: float32 (N, 3, S, S) RGB 0..255 -> (N, C) probabilities; with ``tta`` each
    model also sees the left-right mirror, as in :func:`smallct.engine.train.predict_proba`.
    """

    def __init__(self, models: Sequence[nn.Module], mean, std, task: str, tta: bool = False):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.multilabel = task == "multilabel"
        self.tta = tta

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image / 255.0 - self.mean) / self.std  # as smallct.data.transforms.normalize
        total = 0
        for model in self.models:
            p = self._probs(model(x))
            if self.tta:
                p = (p + self._probs(model(x.flip(-1)))) / 2
            total = total + p
        return total / len(self.models)


def deployable(run: Run, folds: Sequence[str] | None = None, tta: bool = False) -> Deployable:
    """The run's fold models (or those named in ``folds``) as one :class:`Deployable`, in eval mode on the CPU."""
    models = load_models(run, select_checkpoints(run, folds))
    return Deployable(models, run.input["mean"], run.input["std"], run.task, tta).eval()


def export_module(module: nn.Module, path: str | Path, img_size: int, fmt: str = "onnx", opset: int = 17) -> Path:
    """Write ``module`` (input (N, 3, img_size, img_size), any N) as ONNX or TorchScript (traced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, 3, img_size, img_size) * 255
    module = module.eval()
    with warnings.catch_warnings():
        # both exporters are marked deprecated in favour of torch.export, which needs onnxscript for ONNX
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        if fmt == "onnx":
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=["probabilities"],
                              dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}})
        elif fmt == "torchscript":
            with torch.no_grad():
                torch.jit.trace(module, example).save(str(path))
        else:
            raise ValueError(f"format {fmt!r}: expected onnx or torchscript")
    return path


def run_exported(path: str | Path, image: np.ndarray) -> np.ndarray | None:
    """Run an exported file on float32 (N, 3, S, S) images: onnxruntime for .onnx (None when it is not
    installed), ``torch.jit.load`` for TorchScript."""
    path = Path(path)
    if FORMATS.get(path.suffix, "onnx") == "onnx":
        try:
            import onnxruntime  # optional: the export extra
        except ImportError:
            return None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": image.astype(np.float32)})[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(torch.from_numpy(image.astype(np.float32))).numpy()


def export_run(run: Run, out: str | Path, fmt: str | None = None, folds: Sequence[str] | None = None,
               tta: bool = False, opset: int = 17, check: bool = True) -> dict:
    """Export a run's fold models (averaged) to ``out`` and write the contract JSON beside it.

    ``fmt`` defaults to the suffix of ``out`` (.onnx, .pt). With ``check`` the exported file is run
    on random images and compared with torch; the largest absolute difference of the probabilities
    is recorded as ``max_abs_difference`` (None when onnxruntime is not installed). Returns the contract.
    """
    out = Path(out)
    fmt = fmt or FORMATS.get(out.suffix.lower())
    if fmt not in ("onnx", "torchscript"):
        raise ValueError(f"{out}: say --format onnx or torchscript (or use the suffix .onnx or .pt)")
    module = deployable(run, folds, tta)
    size = int(run.input["img_size"])
    export_module(module, out, size, fmt, opset)
    if fmt == "onnx":
        try:
            import onnx  # optional: the export extra

            onnx.checker.check_model(str(out))
        except ImportError:
            pass
    contract = {
        "file": out.name, "format": fmt, "run": str(run.path), "arch": run.arch, "task": run.task,
        "class_names": run.class_names, "positive_class": run.positive_class,
        "models": [c.name for c in select_checkpoints(run, folds)], "tta": tta,
        "input": {"name": "image", "shape": ["N", 3, size, size], "dtype": "float32",
                  "values": "RGB 0..255 (normalisation inside)", "img_size": size, "resize": run.input["resize"],
                  "crop": run.input["crop"], "windows": run.input.get("windows"),
                  "preparation": "smallct.io.images.preprocess(image, img_size, resize, crop); DICOM: "
                                 "smallct.io.dicom.to_rgb(path, windows) first",
                  "mean": run.input["mean"], "std": run.input["std"]},
        "output": {"name": "probabilities", "shape": ["N", len(run.class_names)],
                   "activation": "sigmoid per label" if run.task == "multilabel" else "softmax",
                   "averaged_over_models": True},
        "max_abs_difference": None,
    }
    if check:
        image = (np.random.default_rng(0).random((2, 3, size, size)) * 255).astype(np.float32)
        exported = run_exported(out, image)
        if exported is not None:
            with torch.no_grad():
                expected = module(torch.from_numpy(image)).numpy()
            contract["max_abs_difference"] = float(np.abs(exported - expected).max())
    contract_path(out).write_text(json.dumps(contract, indent=1))
    return contract


def contract_path(out: str | Path) -> Path:
    """Where the contract JSON of an exported file goes: ``model.onnx`` -> ``model.onnx.json``."""
    out = Path(out)
    return out.with_name(out.name + ".json")
