"""Export to ONNX and TorchScript: the exported file gives smallct.predict's probabilities and carries its contract."""

import json
import warnings

import numpy as np
import pytest
import torch

import smallct
from smallct.apply import export as X
from smallct.export import main
from smallct.datasets.folder import load_dataset
from smallct.apply.predict import model_inputs as prepare_inputs, predict
from smallct.engine.run_models import load_run


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


def test_onnx_file_carries_its_contract_and_any_batch_size(small_run, tmp_path, capfd, recwarn):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    run = load_run(small_run)
    out = tmp_path / "model.onnx"
    contract = X.export_run(run, out, folds=["r0_f0"])
    assert capfd.readouterr() == ("", "")  # the exporter prints nothing
    assert not recwarn.list, [str(w.message) for w in recwarn]  # and warns of nothing (none is silenced)
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert not (tmp_path / "model.onnx.data").exists()  # the weights are inside the one file
    assert {p.key: json.loads(p.value) for p in model.metadata_props} == contract == X.read_contract(out)
    assert contract == json.loads(X.contract_path(out).read_text())
    assert (contract["arch"], contract["smallct_version"], contract["models"]) == ("resnet18", smallct.__version__,
                                                                                    ["r0_f0"])
    assert (contract["input"]["mean"], contract["input"]["std"]) == (run.input["mean"], run.input["std"])
    assert (contract["input"]["img_size"], contract["input"]["resize"], contract["input"]["crop"]) == (
        32, run.input["resize"], run.input["crop"])
    assert (contract["class_names"], contract["positive_class"]) == (run.class_names, run.positive_class)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert model.graph.input[0].name == "image" and batch.dim_param and not batch.dim_value  # a named, free axis
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == X.OPSET
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    module = X.deployable(run, ["r0_f0"])
    for n in (1, 3):
        image = (np.random.default_rng(n).random((n, 3, 32, 32)) * 255).astype(np.float32)
        with torch.no_grad():
            expected = module(torch.from_numpy(image)).numpy()
        probs = session.run(None, {"image": image})[0]
        assert probs.shape == (n, 2)
        np.testing.assert_allclose(probs, expected, atol=1e-6, rtol=0)  # float32 sums in another order: ~1e-7


def test_the_graph_holds_the_tta_the_run_was_evaluated_with(small_tta_run, phantom_dir, tmp_path, capsys):
    # 0.3.0 exported without the mirror unless --tta was given, so the graph did not give oof.csv again; the
    # contract says what is inside (tta) and what the run used (run_tta). Mutant: the default off.
    import onnxruntime  # the export extra, installed with the test dependencies

    out = tmp_path / "model.onnx"
    assert main(["--run", str(small_tta_run), "--out", str(out), "--fold", "r0_f1"]) == 0
    contract = X.read_contract(out)
    assert contract["tta"] is True and contract["run_tta"] is True
    assert json.loads(X.contract_path(out).read_text()) == contract
    run, dataset = load_run(small_tta_run), load_dataset(phantom_dir)
    test = json.loads((small_tta_run / "folds" / "r0_f1.json").read_text())["test_index"]
    x = prepare_inputs([dataset.files[i] for i in test], run.input, progress=False).float().numpy()
    probs = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    expected = run.oof().set_index("id").loc[[dataset.ids[i] for i in test], "prob"].to_numpy()
    np.testing.assert_allclose(probs[:, 1], expected, atol=1e-5)
    assert X.deployable(run, ["r0_f1"], tta=False).tta is False  # --no-tta still overrides it


def test_onnx_refuses_an_opset_the_exporter_cannot_write(small_run, tmp_path):
    with pytest.raises(ValueError, match="--opset 17: .* opset 18 or newer; say --opset 18"):
        X.export_run(load_run(small_run), tmp_path / "model.onnx", opset=17)
    assert not (tmp_path / "model.onnx").exists()


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
