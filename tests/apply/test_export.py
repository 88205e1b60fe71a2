"""Export to ONNX and TorchScript: the exported file gives smallct.predict's probabilities."""

import json
import warnings

import numpy as np
import pytest
import torch

from smallct.apply import export as X
from smallct.export import main
from smallct.datasets.folder import load_dataset
from smallct.apply.predict import model_inputs as prepare_inputs, predict
from smallct.engine.run_folder import load_run


def quiet(*_args):
    pass


@pytest.fixture(scope="module")
def images(phantom_dir):
    files = load_dataset(phantom_dir).files[:5]
    return files


def test_onnx_ensemble_with_tta_gives_the_predicted_probabilities(small_run, images, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")  # the export extra
    run = load_run(small_run)
    out = tmp_path / "model.onnx"
    contract = X.export_run(run, out, tta=True)
    assert contract["max_abs_difference"] < 1e-5
    assert contract["models"] == ["r0_f0", "r0_f1"] and contract["input"]["img_size"] == 32
    assert json.loads(X.contract_path(out).read_text()) == contract
    x = prepare_inputs(images, run.input, progress=False).float().numpy()  # 5 images: the batch axis is free
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probs = session.run(None, {"image": x})[0]
    expected = predict([run], images, tta=True, progress=False, log=quiet)
    assert probs.shape == (5, 2)
    np.testing.assert_allclose(probs[:, 1], expected["prob"], atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)


def test_torchscript_of_one_fold_model(small_run, images, tmp_path, capsys):
    out = tmp_path / "fold1.pt"
    assert main(["--run", str(small_run), "--out", str(out), "--fold", "r0_f1"]) == 0
    assert "1 resnet18 fold model," in capsys.readouterr().out
    contract = json.loads(X.contract_path(out).read_text())
    assert contract["format"] == "torchscript" and contract["models"] == ["r0_f1"]
    assert contract["max_abs_difference"] == pytest.approx(0, abs=1e-6)
    run = load_run(small_run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(out))
    with torch.no_grad():
        probs = loaded(prepare_inputs(images, run.input, progress=False).float()).numpy()
    expected = predict([run], images, folds=["r0_f1"], progress=False, log=quiet)
    np.testing.assert_allclose(probs[:, 1], expected["prob"], atol=1e-5)


def test_cli_refuses_an_unknown_format(small_run, tmp_path, capsys):
    assert main(["--run", str(small_run), "--out", str(tmp_path / "model.bin")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smallct.export: error: ") and "--format onnx or torchscript" in err
