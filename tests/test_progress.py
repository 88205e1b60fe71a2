"""Progress bars: tqdm's bar on a terminal, whole lines at a low rate in a log (no carriage returns)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from smallct.progress import is_terminal, log_interval, tqdm
from tests.conftest import REPO


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_a_start_line_and_the_final_count_and_nothing_between(monkeypatch):
    monkeypatch.delenv("SMALLCT_PROGRESS_INTERVAL", raising=False)  # the default: a line every 30 s at most
    log = io.StringIO()
    for _ in tqdm(range(1000), desc="images", file=log):
        pass
    inner = tqdm(total=5, desc="epochs", file=log, leave=False)  # a bar a terminal would wipe when done
    for epoch in range(5):
        inner.update()
        inner.set_postfix(loss=0.5 - epoch / 10)  # a refresh of its own: kept to the rate too
    inner.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text  # no redraws, no cursor movement
    lines = text.splitlines()
    assert len(lines) == 4 and text.endswith("\n")
    assert lines[0].startswith("images:   0%") and "0/1000" in lines[0]
    assert lines[1].startswith("images: 100%") and "1000/1000" in lines[1]
    assert lines[2].startswith("epochs:   0%") and "5/5" in lines[3] and "loss=0.1" in lines[3]


def test_nested_bars_and_tqdm_write_in_a_log_move_no_cursor():
    log = io.StringIO()
    outer = tqdm(total=2, desc="folds", file=log)
    for fold in range(2):
        for _ in tqdm(range(3), desc=f"fold {fold}", file=log, leave=False):  # position 1: below the outer bar
            pass
        tqdm.write(f"fold {fold} done", file=log)
        outer.update()
    outer.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    assert [line for line in lines if line.startswith("fold ") and "done" in line] == ["fold 0 done", "fold 1 done"]
    assert lines[-1].startswith("folds: 100%") and "2/2" in lines[-1]
    assert sum("3/3" in line for line in lines) == 2  # each inner bar ends with its count


def test_a_bar_in_a_log_file_of_another_process_writes_lines_at_the_set_rate(tmp_path):
    log = tmp_path / "job.log"
    code = ("import sys, time\nfrom smallct.progress import tqdm\n"
            "for _ in tqdm(range(40), desc='trials'):\n    time.sleep(0.01)\n"
            "print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))")
    with log.open("w") as stderr:  # stderr to a file, as under nohup or a batch scheduler
        result = subprocess.run([sys.executable, "-c", code], stderr=stderr, stdout=subprocess.PIPE, text=True,
                                timeout=120, env={**os.environ, "PYTHONPATH": str(REPO),
                                                  "SMALLCT_PROGRESS_INTERVAL": "0.1"})
    assert result.returncode == 0, log.read_text()
    assert result.stdout.strip() == "[]"  # the progress module loads no torch, pandas or matplotlib
    text = log.read_text()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    assert lines[0].startswith("trials:   0%") and lines[-1].startswith("trials: 100%") and "40/40" in lines[-1]
    assert 3 <= len(lines) <= 20  # 0.4 s or more of work at one line per 0.1 s: not one line per step


def test_a_terminal_keeps_tqdm_s_own_bar():
    terminal = Terminal()
    assert is_terminal(terminal) and not is_terminal(io.StringIO())
    for _ in tqdm(range(10), desc="images", file=terminal):
        pass
    text = terminal.getvalue()
    assert text.startswith("\rimages:   0%") and text.count("\r") >= 2  # redrawn in place
    assert "10/10" in text.rsplit("\r", 1)[-1] and text.endswith("\n")


def test_the_rate_is_a_setting(monkeypatch):
    monkeypatch.setenv("SMALLCT_PROGRESS_INTERVAL", "5")
    assert log_interval() == 5
    monkeypatch.setenv("SMALLCT_PROGRESS_INTERVAL", "often")
    with pytest.raises(ValueError, match="SMALLCT_PROGRESS_INTERVAL='often': expected a number of seconds"):
        log_interval()
    log = io.StringIO()
    for _ in tqdm(range(3), desc="x", file=log, interval=0):  # interval=0: a line per step (and the last)
        pass
    assert log.getvalue().count("\n") == 5 and "\r" not in log.getvalue()
