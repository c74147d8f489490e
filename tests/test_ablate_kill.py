"""`feat ablate` killed with SIGKILL mid-grid, then re-run: finished runs are kept as they are, the rest is
done, and the results equal an uninterrupted ablation."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd

from feat.fuse.toy import write_toy_cache

ARGS = ["--features", "a", "--features", "b", "--features", "a,b", "--strategies", "concat,mean,gated",
        "--seeds", "3", "--label", "label", "--workers", "1", "--no-curves", "--epochs", "15", "--batch-size",
        "16", "--common-dim", "64", "--lr", "3e-3", "--patience", "15"]


def ablate(cache, out):
    return [sys.executable, "-m", "feat.cli", "ablate", "--cache", str(cache), "--out", str(out), *ARGS]


def test_a_killed_ablation_redoes_only_unfinished_runs(tmp_path):
    cache = write_toy_cache(tmp_path / "cache", n=400)
    reference = tmp_path / "reference"
    subprocess.run(ablate(cache, reference), check=True, capture_output=True, timeout=600)
    expected = pd.read_csv(reference / "results.csv").drop(columns="seconds")

    out = tmp_path / "killed"
    process = subprocess.Popen(ablate(cache, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(out.glob("runs/*/metrics.json"))) < 3 and process.poll() is None:
        assert time.monotonic() < deadline, "the ablation never finished three runs"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}
    total = len(expected)
    assert 3 <= len(finished) < total, "the kill must land mid-grid for this test to mean anything"

    result = subprocess.run(ablate(cache, out), check=True, capture_output=True, text=True, timeout=600)
    assert f"{len(finished)} already done" in " ".join(result.stderr.split() + result.stdout.split())
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in finished.items()), "a finished run was redone"
    assert len(list(out.glob("runs/*/metrics.json"))) == total
    resumed = pd.read_csv(out / "results.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(resumed.sort_values("run").reset_index(drop=True),
                                  expected.sort_values("run").reset_index(drop=True))
