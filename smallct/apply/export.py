"""Export a run's fold models for use outside Python, as ONNX or TorchScript (``python -m smallct.export``).

The exported graph carries the model's whole input contract except decoding:

* input ``image``: float32 (N, 3, S, S), RGB values 0..255 of an image prepared as
  :func:`smallct.io.images.preprocess` does (crop the black border, pad to a square, resize to S px; a
  DICOM slice is first turned into RGB with the run's CT windows, :func:`smallct.io.dicom.to_rgb`);
* output ``probabilities``: float32 (N, C), softmax over the classes, or a sigmoid per label for a
  multi-label run; the normalisation (mean, std) and the activation are inside the graph.

By default every fold model of the run goes into the one graph and their probabilities are
averaged, with the left-right mirror where the run evaluated its test folds with it (``run.json``'s ``tta``), as
:mod:`smallct.apply.predict` does, so the graph gives the run's ``oof.csv`` probabilities again (``tta`` in the
contract: whether the graph holds the mirror; ``run_tta``: whether the run used it); ``--fold r0_f1`` exports a
single fold model. A JSON beside the file (``model.onnx`` -> ``model.onnx.json``) records the contract: size,
resize, crop, windows, mean, std, classes, positive class, task, architecture, smallct version, the fold models
inside. An ONNX file carries the same contract in its own metadata (``metadata_props``, one JSON value per key;
:func:`read_contract`), so it cannot be separated from its normalisation.

ONNX goes through torch's current exporter (``torch.onnx.export(..., dynamo=True)``, a ``torch.export`` graph
translated by ``onnxscript``; opset 18 or newer) with a free batch axis. ``pip install smallct[export]`` adds
``onnxscript``, ``onnx`` (graph check) and ``onnxruntime`` (the export is run once and compared with torch).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

import smallct
from smallct.apply.predict import load_models, run_tta, select_checkpoints
from smallct.engine.run_models import Run

FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}
OPSET = 18  # the oldest opset torch's exporter writes natively (converting a resnet18 down to 17 fails)


class Deployable(nn.Module):
    """Fold models with smallct's normalisation and output activation built in, probabilities averaged.

    ``forward(image)``: float32 (N, 3, S, S) RGB 0..255 (a 2.5D run's: (N, channels, S, S), in the order its
    contract names) -> (N, C) probabilities; with ``tta`` each model also sees the left-right mirror, as in
    :func:`smallct.engine.train.predict_proba`.
    """

    def __init__(self, models: Sequence[nn.Module], mean, std, task: str, tta: bool = False):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.multilabel = task == "multilabel"
        self.tta = tta
        self.channels = len(mean)  # 3, or a 2.5D input's (each slice with its neighbours)

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


def deployable(run: Run, folds: Sequence[str] | None = None, tta: bool | None = None) -> Deployable:
    """The run's fold models (or those named in ``folds``) as one :class:`Deployable`, in eval mode on the CPU;
    ``tta`` None: the mirror average where the run evaluated its test folds with it (:func:`run_tta`)."""
    models = load_models(run, select_checkpoints(run, folds))
    tta = run_tta(run) if tta is None else tta
    return Deployable(models, run.input["mean"], run.input["std"], run.task, tta).eval()


def export_module(module: nn.Module, path: str | Path, img_size: int, fmt: str = "onnx", opset: int = OPSET) -> Path:
    """Write ``module`` (input ``image`` (N, 3, img_size, img_size), any N >= 1) as ONNX or TorchScript (traced).

    ONNX: torch's ``torch.export``-based exporter (needs ``onnxscript``), opset ``opset`` (18 or newer); the
    weights are inside the file unless they pass protobuf's 2 GB limit (then beside it, ``NAME.onnx.data``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, getattr(module, "channels", 3), img_size, img_size) * 255
    module = module.eval()
    if fmt == "onnx":
        if opset < OPSET:
            raise ValueError(f"--opset {opset}: torch's ONNX exporter writes opset {OPSET} or newer; "
                             f"say --opset {OPSET}")
        try:
            import onnxscript  # noqa: F401  (the export extra; without it torch.onnx fails deep inside)
        except ImportError:
            # a ValueError, as for the other optional packages: the CLI prints it as one line
            raise ValueError("ONNX export needs onnxscript: pip install 'smallct[export]'") from None
        batch = torch.export.Dim("batch", min=1)  # the graph's axis 0 is free: any number of images
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset, verbose=False,
                                    input_names=["image"], output_names=["probabilities"],
                                    dynamic_shapes=({0: batch},))
        external = path.with_name(path.name + ".data")
        external.unlink(missing_ok=True)  # a previous, larger export's weights must not sit beside this one
        program.save(str(path))
    elif fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            # TorchScript is deprecated in torch (a FutureWarning per trace); it is the format asked for here
            warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.jit\.")
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
        warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.jit\.")  # as in export_module
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(torch.from_numpy(image.astype(np.float32))).numpy()


def export_run(run: Run, out: str | Path, fmt: str | None = None, folds: Sequence[str] | None = None,
               tta: bool | None = None, opset: int = OPSET, check: bool = True) -> dict:
    """Export a run's fold models (averaged) to ``out`` and write the contract JSON beside it (and, for
    ONNX, into the file's metadata as well: :func:`read_contract` gives it back).

    ``fmt`` defaults to the suffix of ``out`` (.onnx, .pt). ``tta``: the left-right mirror average inside the
    graph; None (default): as the run evaluated its test folds (``run.json``'s ``tta``). With ``check`` the
    exported file is run on random images and compared with torch; the largest absolute difference of the
    probabilities is recorded as ``max_abs_difference`` (None when onnxruntime is not installed). Returns the contract.
    """
    out = Path(out)
    fmt = fmt or FORMATS.get(out.suffix.lower())
    if fmt not in ("onnx", "torchscript"):
        raise ValueError(f"{out}: say --format onnx or torchscript (or use the suffix .onnx or .pt)")
    module = deployable(run, folds, tta)
    size = int(run.input["img_size"])
    channels, context = module.channels, run.input.get("context")
    export_module(module, out, size, fmt, opset)
    if fmt == "onnx":
        import onnx  # installed with onnxscript, which the export needs

        onnx.checker.check_model(str(out))  # by path: works for weights kept beside the file, too
    contract = {
        "file": out.name, "format": fmt, "smallct_version": smallct.__version__,
        "run": str(run.path), "arch": run.arch, "task": run.task,
        "class_names": run.class_names, "positive_class": run.positive_class,
        "models": [c.name for c in select_checkpoints(run, folds)], "tta": module.tta, "run_tta": run_tta(run),
        "input": {"name": "image", "shape": ["N", channels, size, size], "dtype": "float32",
                  "values": "RGB 0..255 (normalisation inside)" if context is None else
                  "0..255, one channel per entry of channel_order: a slice and its neighbours in its series, each "
                  "prepared as RGB 0..255 (the slice itself stands in beyond a series end or a gap)",
                  "channel_order": ["R", "G", "B"] if context is None else context["order"],
                  "context": context, "img_size": size, "resize": run.input["resize"],
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
        image = (np.random.default_rng(0).random((2, channels, size, size)) * 255).astype(np.float32)
        exported = run_exported(out, image)
        if exported is not None:
            with torch.no_grad():
                expected = module(torch.from_numpy(image)).numpy()
            contract["max_abs_difference"] = float(np.abs(exported - expected).max())
    if fmt == "onnx":
        write_metadata(out, contract)
    contract_path(out).write_text(json.dumps(contract, indent=1))
    return contract


def write_metadata(path: str | Path, contract: dict) -> None:
    """Put ``contract`` into an ONNX file's ``metadata_props``: one entry per key, its value as JSON text
    (ONNX metadata values are strings). Replaces any metadata there; the graph and weights are untouched."""
    import onnx  # on use: installed with onnxscript, the export extra

    model = onnx.load(str(path), load_external_data=False)  # weights beside the file stay where they are
    del model.metadata_props[:]
    for key, value in contract.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(model, str(path))


def read_contract(path: str | Path) -> dict:
    """The input contract kept in an exported ONNX file's metadata (as :func:`write_metadata` wrote it)."""
    import onnx  # on use: installed with onnxscript, the export extra

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in model.metadata_props}


def contract_path(out: str | Path) -> Path:
    """Where the contract JSON of an exported file goes: ``model.onnx`` -> ``model.onnx.json``."""
    out = Path(out)
    return out.with_name(out.name + ".json")
