"""The command line: one runner for every command, flags made from the dataclasses, one error path."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys

import pytest

import smallct
import smallct.cv
from smallct import cli
from smallct.cli.commands.cv import config_from_argv
from smallct.cli.runner import Command, command_parser, execute
from smallct.config import CVConfig, DataConfig, TrainConfig
from tests.conftest import REPO

HEAVY = ("torch", "pandas", "matplotlib")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_version_and_the_table_of_commands(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"smallct {smallct.__version__}"
    assert list(cli.COMMANDS) == ["data", "prepare", "cv", "nested", "tune", "fewshot", "curve", "audit", "compare",
                                  "ensemble", "sequence", "predict", "explain", "export"]
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listed = capsys.readouterr().out
    assert all(f"    {name} " in listed for name in cli.COMMANDS)


@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name in cli.COMMANDS),
                                  ["prepare", "rsna", "--help"], ["prepare", "png", "--help"],
                                  ["prepare", "merge", "--help"],
                                  ["data", "verify", "--help"], ["data", "manifest", "--help"]], ids=" ".join)
def test_help_loads_no_torch_pandas_or_matplotlib(argv):
    result = _python("import sys\nfrom smallct import cli\n"
                     f"try:\n    cli.main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0\n"
                     f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_runs_as_python_dash_m(name):
    # -X importtime lists every module the real `python -m` run imported, one per stderr line
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", f"smallct.{name}", "--help"],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m smallct.{name}")
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "smallct.cli" in imported and not imported & set(HEAVY)


def test_console_and_module_errors_are_one_line_naming_the_command(tmp_path, capsys):
    assert cli.main(["cv", "--data", str(tmp_path / "nowhere"), "--weights", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smallct cv: error: ") and "nowhere: no such folder" in err and err.count("\n") == 1
    assert smallct.cv.main(["--data", str(tmp_path / "nowhere"), "--weights", "none"]) == 2
    assert capsys.readouterr().err.startswith("smallct.cv: error: ")


class _Raises(Command):
    name = "raises"
    progress = False

    def __init__(self, error):
        self.error = error

    def add_arguments(self, parser):
        parser.add_argument("--out", default="here")

    def run(self, args):
        raise self.error

    def kept(self, args):
        return f"finished work is kept in {args.out}; run the same command again to resume"


@pytest.mark.parametrize("error, code, first", [
    (ValueError("x.png: cannot read image"), 2, "smallct raises: error: x.png: cannot read image"),
    (FileNotFoundError("no such file: y"), 2, "smallct raises: error: no such file: y"),
    (FloatingPointError("loss is nan at epoch 2: lower the learning rate (fold r0_f1 of runs/cv)"), 2,
     "smallct raises: error: loss is nan at epoch 2: lower the learning rate (fold r0_f1 of runs/cv)"),
    (KeyboardInterrupt(), 130, "interrupted: finished work is kept in here; run the same command again to resume"),
])
def test_one_error_path(capsys, error, code, first):
    command = _Raises(error)
    args = command_parser(command, "smallct raises").parse_args([])
    assert execute(command, args, "smallct raises") == code
    err = capsys.readouterr().err.strip()
    assert err == first and "Traceback" not in err


def test_under_torchrun_only_cv_runs_the_other_commands_refuse_in_one_line(monkeypatch, capsys):
    # a mutant that lets every command run under torchrun repeats a tune study (or a prepare) once per process, each
    # racing the others on the same files; one that refuses cv too breaks torchrun -m smallct.cv
    command = _Raises(AssertionError("ran under torchrun"))
    args = command_parser(command, "smallct raises").parse_args([])
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert execute(command, args, "smallct raises") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smallct raises: error: started by torchrun with WORLD_SIZE=2: ") and "\n" not in err
    assert [name for name, c in cli.COMMANDS.items() if c.distributed] == ["cv"]
    assert smallct.cv.main(["--params", "missing.json"]) == 2  # cv passes the gate (and stops at its settings file)
    assert "missing.json" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: as without
    with pytest.raises(AssertionError, match="ran under torchrun"):
        execute(command, args, "smallct raises")


def test_a_nan_loss_names_its_fold_and_keeps_the_finished_ones(phantom_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["cv", "--data", str(phantom_dir), "--arch", "resnet18", "--weights", "none", "--img-size", "32",
                     "--epochs", "1", "--folds", "2", "--lr", "inf", "--no-tta", "--out", str(out),
                     "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smallct cv: error: ") and "lower the learning rate (fold r0_f0 of" in err, err
    assert "\n" not in err
    assert (out / "run.json").is_file() and not list((out / "folds").glob("*.json"))


def test_ctrl_c_says_finished_folds_are_kept_only_once_a_fold_has_finished(phantom_dir, tmp_path, capsys,
                                                                          monkeypatch):
    # 0.3.0 said "finished folds are kept" whenever it was interrupted, also before any fold had finished
    import smallct.engine.cv as engine_cv

    real, calls = engine_cv.train_fold, []

    def interrupted_at(n: int):
        def train_fold(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        return train_fold

    out = tmp_path / "run"
    argv = ["cv", "--data", str(phantom_dir), "--arch", "resnet18", "--weights", "none", "--img-size", "32",
            "--epochs", "1", "--folds", "2", "--no-tta", "--no-tensorboard", "--out", str(out), "--no-progress"]
    monkeypatch.setattr(engine_cv, "train_fold", interrupted_at(1))  # in the first fold
    assert cli.main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"interrupted: no fold had finished, so nothing is kept in {out}; run the same command again to "
                   f"start over")
    calls.clear()
    monkeypatch.setattr(engine_cv, "train_fold", interrupted_at(2))  # in the second fold, the first one finished
    assert cli.main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"interrupted: finished folds are kept in {out}; run the same command again to resume"
    assert [p.name for p in (out / "folds").glob("*.json")] == ["r0_f0.json"]


def test_ctrl_c_of_a_nested_run_counts_its_inner_folds_as_kept(tmp_path):
    from smallct.cli.commands.nested import COMMAND as nested

    out = tmp_path / "nested"
    assert nested.kept(argparse.Namespace(out=out)).startswith("no fold had finished, so nothing is kept in")
    (out / "inner" / "r0_f0" / "lite" / "folds").mkdir(parents=True)
    (out / "inner" / "r0_f0" / "lite" / "folds" / "r0_f1.json").write_text("{}")  # an inner run's finished fold
    assert nested.kept(argparse.Namespace(out=out)) == (f"finished inner runs and outer folds are kept in {out}; run "
                                                       f"the same command again to resume")


def test_flags_come_from_the_dataclasses():
    parser = command_parser(cli.COMMANDS["cv"], "smallct cv")
    actions = {a.dest: a for a in parser._actions}
    for cls in (DataConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            assert f.name in actions, f.name  # every setting has its flag
    assert actions["optimizer"].choices == ["sgd", "adam", "adamw", "radam"]  # from TrainConfig.optimizer's Literal
    assert isinstance(actions["tta"], argparse.BooleanOptionalAction)
    assert "(default 0.92)" in actions["group_similar"].help  # the default, shown, from DataConfig
    assert config_from_argv([]) == CVConfig()  # no flag given: the dataclass defaults, untouched
    cfg = config_from_argv(["--lr", "0.01", "--group-similar", "0", "--no-crop", "--img-size", "64"])
    assert (cfg.train.lr, cfg.data.group_similar, cfg.data.crop, cfg.data.img_size) == (0.01, None, False, 64)



def test_the_config_builder_records_the_settings_file_for_cv_tune_and_nested(tmp_path):
    # 0.3.0 recorded no _chosen_on at all, and tune then still left params_chosen_on unset: every trial's
    # results.json said its --params settings "do not record on which images they were chosen". One owner,
    # build_config, sets params_source and params_chosen_on for every command. Mutants caught: build_config not
    # setting params_chosen_on (all three lose it); nested taking its own --out as a candidate's run folder.
    from smallct.cli.commands import nested, tune

    cv_cfg = config_from_argv(["--params", "lite0_finetune", "--lr", "0.01"])
    tune_cfg = tune.config_from_argv(["--params", "lite0_finetune"]).base
    nested_cfg = nested.config_from_argv(["--candidates", "lite0_finetune", "--out", str(tmp_path / "n"),
                                          "--lr", "0.01"])[0].candidates["lite0_finetune"]
    for cfg in (cv_cfg, tune_cfg, nested_cfg):
        assert cfg.params_chosen_on == "627b35b2ff42d1f0"  # the recipe's _chosen_on: the Head CT set
        assert cfg.params_source.endswith("lite0_finetune.json: " + json.loads(
            (REPO / "smallct/recipes/lite0_finetune.json").read_text())["_note"])
    assert cv_cfg.train.lr == nested_cfg.train.lr == 0.01 and nested_cfg.out == CVConfig().out  # flags still win
    plain = tmp_path / "best.json"
    plain.write_text(json.dumps({"lr": 0.02}))  # no _chosen_on: not recorded
    cfg = config_from_argv(["--params", str(plain)])
    assert cfg.params_chosen_on is None and cfg.params_source == f"{plain}: settings read from this file"
    assert config_from_argv([]).params_source is None and config_from_argv([]).params_chosen_on is None

@pytest.mark.parametrize("settings, message", [
    ({"learning_rate": 0.1}, "unknown settings learning_rate"),
    ({"lr": "fast"}, "lr: cannot read 'fast' as a number"),
    ({"epochs": 2.5}, "epochs: cannot read 2.5 as an integer"),
    ({"optimizer": "lion"}, "optimizer: 'lion' is not one of sgd, adam, adamw"),
    ({"out": "elsewhere"}, "unknown settings out"),
])
def test_a_settings_file_is_checked_against_the_dataclasses(tmp_path, capsys, settings, message):
    params = tmp_path / "params.json"
    params.write_text(json.dumps(settings))
    assert cli.main(["cv", "--params", str(params), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"smallct cv: error: {params}: ") and message in err and "\n" not in err
    assert not (tmp_path / "run").exists()  # refused before any work
