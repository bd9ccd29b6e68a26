"""The warning for more torch threads than free cores (``sb_mamba.training.cpu_load``)."""

import logging
import subprocess
import sys
import time

import pytest

from sb_mamba.training import cpu_load


def write_stat(path, idle, total):
    """A /proc/stat first line whose idle + iowait is ``idle`` of ``total`` jiffies."""
    user = total - idle
    path.write_text(f"cpu  {user} 0 0 {idle - 10} 10 0 0 0 0 0\ncpu0 1 2 3 4\n")


def test_cpu_times_are_read_from_proc_stat(tmp_path):
    write_stat(tmp_path / "stat", idle=300, total=1000)
    assert cpu_load.read_cpu_times(tmp_path / "stat") == (300, 1000)
    assert cpu_load.read_cpu_times(tmp_path / "missing") is None


def test_busy_cores_from_two_samples(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    write_stat(stat, idle=1000, total=2000)
    monkeypatch.setattr(cpu_load.time, "sleep", lambda s: write_stat(stat, idle=1100, total=2200))
    # 100 of the 200 jiffies in between were idle: one of 2 cores busy
    assert cpu_load.busy_cores(0.1, cpus=2, stat=stat) == pytest.approx(1.0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat")
def test_a_busy_process_is_seen():
    """A real process spinning on one core shows as about one busy core."""
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = cpu_load.busy_cores(1.0)
    finally:
        spin.kill()
        spin.wait()
    assert busy is not None and busy >= 0.7


def test_advice_names_the_thread_count_to_use(caplog, monkeypatch):
    assert cpu_load.thread_advice(2, 2, 0.3) is None  # fits
    assert cpu_load.thread_advice(1, 2, 1.9) is None  # one thread never waits for another
    assert cpu_load.thread_advice(4, 8, 3.0) is None
    text = cpu_load.thread_advice(8, 8, 3.0)
    assert "8 threads" in text and "3.0 of the 8 cores" in text and "OMP_NUM_THREADS=5" in text
    monkeypatch.setattr(cpu_load, "busy_cores", lambda interval, cpus: cpus - 0.5)
    with caplog.at_level(logging.WARNING, logger=cpu_load.__name__):
        advice = cpu_load.warn_if_cores_busy(threads=2)
    assert advice and "OMP_NUM_THREADS=1" in caplog.text
    assert cpu_load.warn_if_cores_busy(threads=1) is None
