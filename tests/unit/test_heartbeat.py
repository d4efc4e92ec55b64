"""Heartbeat files (training/heartbeat.py): the latest (iteration, phase) mark is written by a background thread, at
most once per period and only when it changed; close() and the process's exit write the last mark; a failed write
warns once and raises nothing."""

import json
import os
import subprocess
import sys
import time

from megatron_llm.training import heartbeat
from megatron_llm.training.heartbeat import HeartbeatWriter, at


def _read(path):
    with open(path) as f:
        return json.load(f)


def _wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_latest_mark_written_in_background_at_most_once_per_period(tmp_path):
    t0 = time.time()
    at(1, "forward-backward")
    w = HeartbeatWriter(str(tmp_path / "hb"), rank=3, period_s=0.2)
    path = tmp_path / "hb" / "rank_00003.json"
    try:
        assert _wait_for(path.exists)
        beat = _read(path)
        assert (beat["rank"], beat["iteration"], beat["phase"], beat["pid"]) == (3, 1, "forward-backward", os.getpid())
        assert t0 <= beat["since"] <= time.time()
        with w._lock:  # the file is renamed into place before the count goes up: let that write finish
            first = w.writes
        start, i = time.monotonic(), 1
        while time.monotonic() - start < 1.0:  # many thousands of marks in one second
            i += 1
            at(i, "optimizer step")
        elapsed = time.monotonic() - start
        assert i > 1000
        assert 1 <= w.writes - first <= elapsed / 0.2 + 2, w.writes  # bounded by the period, not the marks
        assert _wait_for(lambda: _read(path)["iteration"] == i)  # the last mark, within a period
        assert _read(path)["phase"] == "optimizer step"
        with w._lock:
            written = w.writes
        time.sleep(0.7)  # three periods with no new mark: nothing rewritten
        assert w.writes == written
    finally:
        w.close()
    assert not w._thread.is_alive()


def test_close_writes_the_last_mark_once(tmp_path):
    w = HeartbeatWriter(str(tmp_path), rank=0, period_s=600)  # the thread never fires in this test
    at(7, "health exchange")
    w.close()
    assert _read(tmp_path / "rank_00000.json")["iteration"] == 7 and w.writes == 1
    w.close()
    assert w.writes == 1 and not w._thread.is_alive()
    assert os.listdir(tmp_path) == ["rank_00000.json"]  # no temporary file left


def test_failed_write_warns_once_and_raises_nothing(tmp_path, capsys):
    hb = tmp_path / "hb"
    w = HeartbeatWriter(str(hb), rank=1, period_s=600)
    os.rmdir(hb)
    hb.write_text("not a directory")  # the heartbeat directory is gone: every write fails
    at(2, "forward-backward")
    w.write()
    at(3, "forward-backward")
    w.close()
    err = capsys.readouterr().err
    assert err.count("cannot write heartbeat") == 1 and "rank 1" in err and str(hb) in err, err
    assert w.writes == 0


def test_a_rank_ending_in_an_exception_records_where_it_was(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(heartbeat.__file__)))
    code = ("from megatron_llm.training.heartbeat import HeartbeatWriter, at;"
            f"w = HeartbeatWriter({str(tmp_path)!r}, rank=5, period_s=600);"
            "at(9, 'gradient reduction');"
            "raise RuntimeError('peer hung')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": root})
    assert proc.returncode == 1 and "peer hung" in proc.stderr
    beat = _read(tmp_path / "rank_00005.json")
    assert (beat["iteration"], beat["phase"]) == (9, "gradient reduction")
