"""Measurements of Aim, run inside a virtual environment that has Aim (see run.py).

python aim_peer.py progress N       seconds per Run.report_progress(expect_next_in=3) call
python aim_peer.py poll N REPO      CPU seconds per watcher poll and RSS bytes, N runs checked in
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time


def progress(n: int, repo: str) -> dict[str, float]:
    from aim import Run

    run = Run(repo=repo, system_tracking_interval=None, capture_terminal_logs=False)
    run.report_progress(expect_next_in=3)
    start = time.perf_counter()
    for _ in range(n):
        run.report_progress(expect_next_in=3)
    spent = time.perf_counter() - start
    run.report_successful_finish()
    run.close()
    return {"per_call": spent / n}


def poll(n: int, repo: str) -> dict[str, float]:
    import shutil

    import aim.ext.notifier as notifier
    import psutil
    from aim import Repo
    from aim.sdk.run_status_watcher import RunStatusWatcher

    aim_repo = Repo.from_path(repo, init=True)
    config = os.path.join(repo, ".aim", "ext", "notifications", "config.json")
    os.makedirs(os.path.dirname(config), exist_ok=True)
    shutil.copy(os.path.join(os.path.dirname(notifier.__file__), "config_default.json"), config)
    check_ins = os.path.join(repo, ".aim", "check_ins")
    os.makedirs(check_ins, exist_ok=True)
    now = time.time()
    for i in range(n):  # the file names Aim's reporter writes: <run>-<idx>-check_in-<epoch>-<next_in>
        open(os.path.join(check_ins, f"{i:024x}-1-check_in-{now:.3f}-3600"), "w").close()
    watcher = RunStatusWatcher(aim_repo, background=True)
    watcher.check_for_new_events()
    spent = []
    for _ in range(7):  # the median, as nbmonitor's is measured
        start = time.process_time()
        watcher.check_for_new_events()
        spent.append(time.process_time() - start)
    return {"cpu_per_poll": statistics.median(spent), "rss": float(psutil.Process().memory_info().rss)}


if __name__ == "__main__":
    what, count = sys.argv[1], int(sys.argv[2])
    result = progress(count, sys.argv[3]) if what == "progress" else poll(count, sys.argv[3])
    print(json.dumps(result))
