"""RUN_DIR/raydf.log keeps the traceback of what stopped a run; the console gets one line pointing at it."""

from __future__ import annotations

import argparse
import logging

import pytest

from raydf.cli import run_cli
from raydf.errors import DataError, find_user_error
from raydf.runs.runlog import run_log


def _crash_in_a_task() -> None:
    try:
        {}["no such column"]
    except KeyError as e:
        raise DataError("fold 1 failed: KeyError: 'no such column'") from e


def test_traceback_goes_to_the_log_file_and_the_error_points_at_it(tmp_path):
    log_file = tmp_path / "raydf.log"
    with pytest.raises(DataError) as info:
        with run_log(log_file):
            logging.getLogger("raydf.test").warning("a line of the run")
            _crash_in_a_task()
    text = log_file.read_text()
    assert "a line of the run" in text
    assert "Traceback" in text and "KeyError: 'no such column'" in text and "_crash_in_a_task" in text
    assert info.value.log_file == str(log_file)
    assert not [h for h in logging.getLogger().handlers if getattr(h, "baseFilename", None) == str(log_file)]


def test_a_plain_user_error_needs_no_pointer(tmp_path):
    with pytest.raises(DataError) as info:
        with run_log(tmp_path / "raydf.log"):
            raise DataError("CSV x.csv has no label column")
    assert info.value.log_file is None and "Traceback" in (tmp_path / "raydf.log").read_text()


def _args(debug: bool = False) -> argparse.Namespace:
    return argparse.Namespace(quiet=True, verbose=0, debug=debug)


def test_cli_prints_one_line_and_the_log_file_not_the_traceback(tmp_path, capsys):
    def main(_):
        with run_log(tmp_path / "raydf.log"):
            _crash_in_a_task()

    with pytest.raises(SystemExit) as info:
        run_cli(main, _args())
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert err.splitlines() == [
        "raydf: error: fold 1 failed: KeyError: 'no such column'",
        f"raydf: the traceback is in {tmp_path / 'raydf.log'} (or rerun with --debug)",
    ]


def test_cli_debug_shows_the_traceback(tmp_path):
    with pytest.raises(DataError):
        run_cli(lambda _: _crash_in_a_task(), _args(debug=True))


def test_find_user_error_unwraps_causes():
    try:
        try:
            raise DataError("cannot decode a.jpg: file not found")
        except DataError as inner:
            raise RuntimeError("task failed") from inner
    except RuntimeError as outer:
        assert str(find_user_error(outer)) == "cannot decode a.jpg: file not found"
    assert find_user_error(ValueError("x")) is None
