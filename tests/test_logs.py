"""A run's log tail: what its process logged and printed, kept with it, quoted by its alarms."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import nbmonitor
from nbmonitor import _capture, _writer, logtail, templates
from nbmonitor.config import NotifierConfig, NotifierStore
from nbmonitor.errors import CorruptRecordError
from nbmonitor.events import Event
from nbmonitor.logtail import CLIP, Lines, LogLine
from nbmonitor.repo import Repo

from .helpers import FakeClock, Proc, child_env, nbw, run_id_from, wait_until, watching
from .servers import HttpRecorder

POLL = 0.2


# -- lines from pieces of text -------------------------------------------------------------------


def test_pieces_become_whole_lines_and_a_carriage_return_keeps_what_a_terminal_shows() -> None:
    lines = Lines()
    assert lines.feed("step 1") == []
    assert lines.feed(" done\nstep 2\n\nhalf") == ["step 1 done", "step 2"]  # an empty line is no line
    assert lines.feed("way\r\n") == ["halfway"]
    assert lines.feed("\r 10%|█  |\r 50%|█████|\r100%|██████████|\n") == ["100%|██████████|"]
    assert lines.feed("no newline yet") == []
    assert lines.flush() == ["no newline yet"]
    assert lines.flush() == []


def test_a_long_line_is_clipped_saying_how_much_and_bad_unicode_is_kept_escaped() -> None:
    lines = Lines()
    for _ in range(10):
        assert lines.feed("x" * 1000) == []
    (line,) = lines.feed("tail\n")
    assert line == "x" * CLIP + f"… ({10 * 1000 + 4 - CLIP} more characters)"
    undecodable = b"ok \xff\xfe end".decode("utf-8", "surrogateescape")
    (shown,) = lines.feed(undecodable + "\n")
    assert shown == "ok \\udcff\\udcfe end"
    shown.encode("utf-8")  # valid: it can go into any file or message


def test_the_middle_of_a_huge_piece_is_counted_not_kept() -> None:
    lines = Lines()
    assert lines.feed("start ") == []
    assert lines.skip(10_000_000, newline=False) == []
    line, after = lines.feed("end\nnext\n")
    assert line == f"start … ({10_000_000 + 3} more characters)"
    assert after == "next"
    lines = Lines()
    lines.feed("half")
    assert lines.skip(500, newline=True) == ["half… (clipped)", "… (500 characters not kept)"]
    assert lines.feed("end of some line\nwhole\n") == ["…end of some line", "whole"]


# -- the file ------------------------------------------------------------------------------------


def test_the_tail_file_reads_back_and_a_bad_line_costs_only_itself(repo: Repo) -> None:
    run_id = "a" * 32
    lines = [
        LogLine(1_800_000_000.5, "INFO", "log", "loss 0.3"),
        LogLine(1_800_000_001.0, "", "stdout", "\x1b[31mred\x1b[0m \x00"),
        LogLine(1_800_000_002.0, "", "stderr", "warning", who="rank 1"),
    ]
    text = (
        logtail.encode_header(run_id) + logtail.encode(lines[:2]) + '{"torn": \n' + logtail.encode(lines[2:])
    )
    repo.replace_log(run_id, text)
    assert repo.read_log(run_id) == (lines, 1)
    assert oct(repo.log_path(run_id).stat().st_mode & 0o777) == "0o600"
    repo.replace_log("b" * 32, text)
    with pytest.raises(CorruptRecordError, match="another run"):
        repo.read_log("b" * 32)
    assert repo.log_tail("c" * 32, 5) == ()  # no tail: none


def test_a_line_is_shown_as_one_line_of_data() -> None:
    line = LogLine(0.0, "", "stdout", "\x1b[2J\x1b[31mred\x00\nFAKE ALARM" + "y" * 500, who="rank 3")
    shown = line.shown()
    assert "\n" not in shown
    assert "\x1b" not in shown
    assert "\x00" not in shown
    assert "[rank 3] \\x1b[2J\\x1b[31mred\\x00\\nFAKE ALARM" in shown
    assert len(shown) == logtail.ALARM_WIDTH
    assert shown.endswith("…")


# -- the capture, in this process ----------------------------------------------------------------


@pytest.fixture
def capture() -> Iterator[_capture.Capture]:
    """A capture of this process's streams and logging, undone after the test."""
    made = _capture.Capture(logging.INFO)
    yield made
    for run in made.runs:
        made.detach(run)


class _Logs:
    def __init__(self) -> None:
        self.lines: list[LogLine] = []

    def add(self, lines: list[LogLine]) -> None:
        self.lines += lines


def _texts(run: _Logs) -> list[tuple[str, str, str]]:
    return [(x.level, x.stream, x.text) for x in run.lines]


def test_what_is_printed_goes_to_the_screen_unchanged_and_into_the_tail(
    capture: _capture.Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    run = _Logs()
    capture.attach(run)  # type: ignore[arg-type]  # what a RunLog does
    assert sys.stdout is not out
    assert sys.stdout.getvalue() == ""  # type: ignore[union-attr]  # the StringIO's, forwarded
    print("epoch 1", "loss 0.5")
    print("careful", file=sys.stderr, end="")
    sys.stdout.writelines(["a\n", "b\n"])
    capture.drain()
    assert _texts(run) == [("", "stdout", "epoch 1 loss 0.5"), ("", "stdout", "a"), ("", "stdout", "b")]
    capture.detach(run)  # type: ignore[arg-type]
    assert sys.stdout is out
    assert sys.stderr is err
    assert _texts(run)[-1] == ("", "stderr", "careful")  # its last word, without its newline
    assert out.getvalue() == "epoch 1 loss 0.5\na\nb\n"
    assert err.getvalue() == "careful"
    print("after")
    capture.drain()
    assert _texts(run)[-1] == ("", "stderr", "careful")  # nothing after the run


def test_logging_records_are_kept_once_with_their_level_and_logging_is_left_as_it_was(
    capture: _capture.Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    run = _Logs()
    capture.attach(run)  # type: ignore[arg-type]
    assert root.handlers == []
    assert root.level == logging.WARNING
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(message)s", force=False)
    assert len(root.handlers) == 1  # basicConfig still works after the run started
    logging.getLogger("data").info("loaded %d batches", 12)
    logging.debug("not kept: below INFO")
    print("loaded 12 batches, said print")
    try:
        raise ValueError("bad shape")
    except ValueError:
        logging.exception("step failed")
    capture.drain()
    capture.detach(run)  # type: ignore[arg-type]
    root.handlers = []
    assert _texts(run)[:2] == [
        ("INFO", "log", "data: loaded 12 batches"),  # once: not again as the handler's stderr line
        ("", "stdout", "loaded 12 batches, said print"),
    ]
    assert _texts(run)[2] == ("ERROR", "log", "step failed")
    assert _texts(run)[-1] == ("ERROR", "log", "ValueError: bad shape")
    assert "INFO:data:loaded 12 batches" in err.getvalue()  # the screen got it, as always
    assert logging.getLogRecordFactory() is not None
    assert not any(x.stream == "stderr" and "loaded 12" in x.text for x in run.lines)


def test_a_burst_faster_than_the_queue_keeps_the_last_lines_and_says_some_were_skipped(
    capture: _capture.Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    run = _Logs()
    capture.attach(run)  # type: ignore[arg-type]
    for i in range(100_000):
        print("line", i)
    capture.detach(run)  # type: ignore[arg-type]
    assert out.getvalue().count("\n") == 100_000  # the screen got every line
    texts = [x.text for x in run.lines]
    assert texts[0].startswith("… (nbmonitor: output came faster than it is kept; lines skipped)")
    assert texts[-1] == "line 99999"
    assert texts[-2] == "line 99998"
    assert len(texts) <= _capture.QUEUE  # bounded


def test_a_huge_write_is_kept_as_its_start_and_end(
    capture: _capture.Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    run = _Logs()
    capture.attach(run)  # type: ignore[arg-type]
    huge = "z" * 10_000_000
    sys.stdout.write(huge)
    sys.stdout.write("\nafter\n")
    capture.detach(run)  # type: ignore[arg-type]
    assert len(out.getvalue()) == 10_000_000 + 7
    first, second = run.lines
    assert first.text == "z" * CLIP + f"… ({10_000_000 - CLIP} more characters)"
    assert second.text == "after"


def test_a_run_s_tail_is_written_at_most_once_a_second_and_cut_to_its_last_lines(
    repo: Repo, clock: FakeClock, monitor: _writer.Writer
) -> None:
    run = nbmonitor.Run("chatty", repo=repo, usage=False)
    tail = run._log  # the run's own tail
    assert tail is not None
    for i in range(3 * logtail.KEEP):
        tail.add([LogLine(clock.wall(), "", "stdout", f"line {i}")])
        if i % 500 == 0:
            monitor.tick()
            clock.advance(1.0)
    monitor.tick()
    lines, _ = repo.read_log(run.id)
    assert len(lines) <= 2 * logtail.KEEP
    tail.add([LogLine(clock.wall(), "", "stdout", "not yet")])
    monitor.tick()  # within the second: not written
    assert repo.read_log(run.id)[0][-1].text != "not yet"
    run.close()
    lines, _ = repo.read_log(run.id)
    assert lines[-1].text == "not yet"
    assert lines[-2].text == f"line {3 * logtail.KEEP - 1}"
    assert len(lines) >= logtail.KEEP


# -- alarms --------------------------------------------------------------------------------------


def test_alarms_quote_the_last_lines_as_many_as_the_notifier_shows() -> None:
    tail = tuple(LogLine(1_800_000_000.0 + i, "", "stdout", f"step {i}") for i in range(30))
    run = templates.SAMPLE.run
    event = Event("stalled", "stalled-1", run, 0.0, 95.0, 3.0, "watcher", log_tail=tail)
    chat = templates.text_for(event)
    assert chat.splitlines()[-6] == "Last lines:"
    assert [line.split()[-1] for line in chat.splitlines()[-5:]] == ["25", "26", "27", "28", "29"]
    mail = templates.text_for(event, tail_lines=20)
    assert len(mail.splitlines()) == len(chat.splitlines()) + 15
    assert "\n" not in templates.describe(event)  # the watcher's own line stays one line
    assert "step 29" not in templates.describe(event)
    again = Event.from_dict(json.loads(json.dumps(event.to_dict())))
    assert again.log_tail == tail  # a pending delivery quotes the same lines after a restart
    assert templates.text_for(Event("stalled", "stalled-1", run, 0.0, 95.0, 3.0, "w")).endswith(
        "train.py:88)."
    )


# -- real scripts --------------------------------------------------------------------------------

CHATTY = """
import contextlib, logging, os, sys
import nbmonitor

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("train")
watched = os.environ.get("WATCHED") == "1"
with (nbmonitor.watch(name="chatty", eta=30) if watched else contextlib.nullcontext()):
    log.info("loading data from %s", "/data/train")
    print("epoch 1: loss 0.52")
    print("epoch 2: loss 0.31", flush=True)
    print("a warning on stderr", file=sys.stderr)
    sys.stdout.write("no newline, then ")
    print("\\x1b[31mred\\x1b[0m and a NUL \\x00")
    sys.stderr.write(b"undecodable: \\xff\\n".decode("utf-8", "surrogateescape"))
    log.warning("about to divide")
    1 / 0
"""


def test_a_failing_script_s_terminal_output_is_byte_for_byte_what_it_is_without_nbmonitor(
    tmp_path: Path, repo: Repo, http: HttpRecorder
) -> None:
    script = tmp_path / "chatty.py"
    script.write_text(CHATTY)
    NotifierStore(repo).add(NotifierConfig.create("webhook", {"url": f"{http.url}/hook"}))

    def run(watched: str) -> subprocess.CompletedProcess[bytes]:
        env = child_env(repo.path) | {"WATCHED": watched}
        env.pop("PYTHONUNBUFFERED")  # as a user runs it: stdout block-buffered into the pipe
        return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=60)

    plain = run("0")
    with watching(repo.path, POLL) as watcher:
        watched = run("1")
        watcher.wait_for("FAILED", timeout=30)
        wait_until(lambda: http.answered(200), 15, "the webhook delivery")
    assert watched.returncode == plain.returncode == 1

    def strip(err: bytes) -> bytes:  # logging's time stamps (23 characters and a space)
        return b"\n".join(line[24:] if line[:2] == b"20" else line for line in err.split(b"\n"))

    assert watched.stdout == plain.stdout
    assert strip(watched.stderr) == strip(plain.stderr)  # the same, but for logging's time stamps
    assert b"ZeroDivisionError: division by zero" in watched.stderr

    (post,) = [r for r in http.answered(200) if r.json()["event"] == "failed"]
    body = post.json()
    text = body["text"]
    assert "chatty failed: ZeroDivisionError: division by zero" in text
    quoted = text.split("Last lines:\n", 1)[1].splitlines()
    assert len(quoted) == len(repo.read_log(body["run"]["id"])[0]) < 20  # all: a webhook quotes up to 20
    assert quoted[-1].split(None, 2)[1:] == ["ERROR", "ZeroDivisionError: division by zero"]
    assert any("1 / 0" in line for line in quoted[-4:])  # the traceback's last lines
    assert any("WARNING" in line and "train: about to divide" in line for line in quoted)
    assert any("stdout epoch 2: loss 0.31" in line for line in quoted)
    assert any("\\x1b[31mred\\x1b[0m and a NUL \\x00" in line for line in quoted)  # escaped
    assert [x["stream"] for x in body["log_tail"]][-1] == "traceback"
    run_id = body["run"]["id"]
    lines, bad = repo.read_log(run_id)
    assert bad == 0
    texts = [x.text for x in lines]
    assert texts[:4] == [
        "train: loading data from /data/train",
        "epoch 1: loss 0.52",
        "epoch 2: loss 0.31",
        "a warning on stderr",
    ]
    assert "undecodable: \\udcff" in texts
    assert [x.level for x in lines if x.stream == "log"] == ["INFO", "WARNING"]

    shown = nbw(repo, "logs", run_id[:8], "--lines", "3")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-1].endswith("ERROR  ZeroDivisionError: division by zero")
    assert len(shown.stdout.splitlines()) == 3


ORDER = """
import contextlib, logging, os, sys
import nbmonitor

logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(message)s")
with (nbmonitor.watch(name="order") if os.environ.get("WATCHED") == "1" else contextlib.nullcontext()):
    for i in range(3000):
        print("printed", i, end=" ")
        logging.info("logged %d", i)
        sys.stdout.buffer.write(b"bytes %d\\n" % i)
print("after the run")
logging.warning("and a record")
"""


def test_prints_and_a_handler_made_before_the_run_keep_their_order_in_a_file(
    tmp_path: Path, repo: Repo
) -> None:
    script = tmp_path / "order.py"
    script.write_text(ORDER)
    outputs = []
    for watched in ("0", "1"):
        env = child_env(repo.path) | {"WATCHED": watched}
        env.pop("PYTHONUNBUFFERED")  # block-buffered into a file
        with open(tmp_path / f"out-{watched}.txt", "wb") as out:
            done = subprocess.run([sys.executable, str(script)], env=env, stdout=out, timeout=60, check=False)
        assert done.returncode == 0
        outputs.append((tmp_path / f"out-{watched}.txt").read_bytes())
    assert outputs[1] == outputs[0]
    assert outputs[0].count(b"\n") == 2 * 3000 + 2
    (record,) = repo.runs()
    lines, _ = repo.read_log(record.id)
    # "printed 2999 INFO logged 2999" is the handler's copy of the record (the level before its
    # message), so it is kept once, as the record.
    assert [(x.level, x.stream, x.text) for x in lines[-2:]] == [
        ("INFO", "log", "logged 2999"),
        ("", "stdout", "bytes 2999"),  # what went to the buffer itself, too
    ]


STALLED = """
import logging, sys, time
import nbmonitor

logging.basicConfig(level=logging.INFO)
with nbmonitor.watch(eta=1, grace=0.5, name="waits") as run:
    for i in range(3):
        logging.info("batch %d loaded", i)
        run.report_progress()
    print("waiting", run.id, "for the next batch", flush=True)
    time.sleep(120)
"""


def test_the_stalled_alarm_quotes_what_the_run_said_last(
    tmp_path: Path, repo: Repo, http: HttpRecorder
) -> None:
    script = tmp_path / "waits.py"
    script.write_text(STALLED)
    NotifierStore(repo).add(NotifierConfig.create("slack", {"webhook_url": f"{http.url}/slack"}))
    with watching(repo.path, POLL) as watcher:
        proc = Proc.python(script, repo=repo.path)
        try:
            run_id = run_id_from(proc, "waiting")
            watcher.wait_for("STALLED", timeout=30)
            wait_until(lambda: http.answered(200), 15, "the Slack delivery")
            follow = Proc(
                [sys.executable, "-m", "nbmonitor", "--repo", str(repo.path), "logs", run_id, "-f"], repo.path
            )
            follow.wait_for("for the next batch", timeout=20)
        finally:
            proc.stop()
        assert follow.wait_exit(20) == 0  # the run ended (crashed): --follow ends too
        watcher.wait_for("CRASHED", timeout=30)
        wait_until(lambda: len(http.answered(200)) == 2, 15, "the crash's Slack delivery")
    (crashed,) = [r.json()["text"] for r in http.answered(200) if "waits crashed" in r.json()["text"]]
    assert crashed.splitlines()[-1].endswith(f"stdout waiting {run_id} for the next batch")  # killed later
    (text,) = [r.json()["text"] for r in http.answered(200) if "waits stalled" in r.json()["text"]]
    quoted = text.split("Last lines:\n", 1)[1].splitlines()
    assert len(quoted) == 4  # what there is, up to Slack's five
    assert quoted[-1].endswith(f"stdout waiting {run_id} for the next batch")
    assert quoted[0].split(None, 2)[1:] == ["INFO", "batch 0 loaded"]
    (line,) = watcher.matching("STALLED")
    assert "batch 0 loaded" not in line  # the watcher's own line stays one line
    assert [line.split(None, 2)[2] for line in follow.matching(" INFO ")] == [
        f"batch {i} loaded" for i in range(3)
    ]


RANK = """
import logging, os, sys, time
import nbmonitor

rank, go = int(sys.argv[1]), sys.argv[2]
logging.basicConfig(level=logging.INFO)
with nbmonitor.watch(name="job", group="two-ranks", rank=rank, world_size=2) as run:
    print("started", run.id, flush=True)
    deadline = time.monotonic() + 30
    while not os.path.exists(go) and time.monotonic() < deadline:  # both start logging at once
        time.sleep(0.01)
    for i in range(1500):
        logging.info("rank %d step %d", rank, i)
        print(f"rank {rank} printed {i}")
"""


def test_two_ranks_logging_at_once_each_keep_their_whole_tail_saying_which_rank(
    tmp_path: Path, repo: Repo
) -> None:
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    go = tmp_path / "go"
    ranks = [Proc.python(script, str(rank), str(go), repo=repo.path) for rank in (0, 1)]
    ids = [run_id_from(proc, "started") for proc in ranks]
    go.touch()
    assert [proc.wait_exit(60) for proc in ranks] == [0, 0]
    for rank, run_id in enumerate(ids):
        lines, bad = repo.read_log(run_id)
        assert bad == 0
        assert {x.who for x in lines} == {f"rank {rank}"}
        # The file holds the last KEEP lines at least (up to twice that between rewrites), none
        # lost or reordered: logged and printed lines alternate to the end. Older lines of the
        # burst may have gone (more came in a second than the queue keeps): the first line says so.
        if lines[0].text.startswith("… (nbmonitor: output came faster"):
            lines = lines[1:]
        assert logtail.KEEP <= len(lines) <= 2 * logtail.KEEP
        said = [text for i in range(1500) for text in (f"rank {rank} step {i}", f"rank {rank} printed {i}")]
        assert [x.text for x in lines] == said[-len(lines) :]
    shown = nbw(repo, "logs", "job", "--lines", "2000")  # the group (its name): both, by time
    assert shown.returncode == 0, shown.stderr
    merged = [line.split("[", 1)[1].split("] ", 1) for line in shown.stdout.splitlines()]
    assert len(merged) == 2000
    assert {who for who, _ in merged} == {"rank 0", "rank 1"}
    for rank, run_id in enumerate(ids):
        own = [x.text for x in repo.read_log(run_id)[0]]
        mine = [text for who, text in merged if who == f"rank {rank}"]
        assert mine == own[-len(mine) :]  # each rank's lines in its own order, none left out


HOSTILE = """
import sys
import nbmonitor

with nbmonitor.watch(name="hostile <b>bold</b> {name}") as run:
    print("started", run.id, flush=True)
    sys.stdout.write("x" * 10_000_000)
    sys.stdout.write("\\n")
    print("\\x1b]0;title\\x07\\x1b[2J\\x00 nul and ansi")
    sys.stderr.write("bad: " + b"\\xc3\\x28\\xa0".decode("utf-8", "surrogateescape") + "\\n")
    print("<script>alert(1)</script>")
    raise RuntimeError("hostile")
"""


def test_hostile_output_is_clipped_and_escaped_and_breaks_nothing(tmp_path: Path, repo: Repo) -> None:
    script = tmp_path / "hostile.py"
    script.write_text(HOSTILE)
    proc = subprocess.run(
        [sys.executable, str(script)], env=child_env(repo.path), capture_output=True, timeout=60
    )
    assert proc.returncode == 1
    assert len(proc.stdout) > 10_000_000  # the terminal got all of it
    run_id = proc.stdout.split(b"\n", 1)[0].split()[1].decode()
    lines, bad = repo.read_log(run_id)
    assert bad == 0
    assert os.path.getsize(repo.log_path(run_id)) < 50_000
    texts = [x.text for x in lines]
    assert texts[1] == "x" * CLIP + f"… ({10_000_000 - CLIP} more characters)"
    assert texts[2] == "\x1b]0;title\x07\x1b[2J\x00 nul and ansi"  # kept as it was, shown escaped
    assert texts[3] == "bad: \\udcc3(\\udca0"
    shown = nbw(repo, "logs", run_id)
    assert "\x1b" not in shown.stdout
    assert "\x00" not in shown.stdout
    assert "\\x1b]0;title\\x07\\x1b[2J\\x00 nul and ansi" in shown.stdout
    assert "<script>alert(1)</script>" in shown.stdout  # text, for a terminal


def test_no_logs_keeps_no_tail(repo: Repo, clock: FakeClock, monitor: _writer.Writer) -> None:
    with nbmonitor.watch(name="quiet", repo=repo, logs=False, usage=False) as run:
        print("not kept")
    assert not repo.log_path(run.id).exists()
    assert "has no log tail" in nbw(repo, "logs", run.id).stderr


WORKERS = """
import logging, multiprocessing as mp, sys
import nbmonitor


def work(i):
    if i < 2:  # the first two tasks meet: each worker has work, however busy the machine
        barrier.wait(30)
    print(f"worker says {i}", flush=True)
    logging.getLogger("w").warning("worker logs %d", i)
    return i


def dies():
    print("about to fail", flush=True)
    raise RuntimeError("worker broke")


if __name__ == "__main__":
    mp.set_start_method("fork")
    barrier = mp.Barrier(2)
    with nbmonitor.watch(name="pool") as run:
        print("started", run.id, flush=True)
        pool = mp.Pool(2)
        print(sorted(pool.map(work, range(4), chunksize=1)), flush=True)
        pool.close()
        pool.join()
        loader = mp.Process(target=dies, name="loader")
        loader.start()
        loader.join()
        print("parent done", flush=True)
"""


def test_forked_workers_lines_go_into_the_run_s_tail_saying_which_worker(tmp_path: Path, repo: Repo) -> None:
    script = tmp_path / "workers.py"
    script.write_text(WORKERS)
    env = child_env(repo.path)
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.split()[1].decode()
    assert len(list(repo.logs_dir.glob(f"{run_id}.*.jsonl"))) == 3  # one file per worker
    lines, bad = repo.read_log(run_id)
    assert bad == 0
    said = [(x.who, x.stream, x.text) for x in lines]
    workers = {who for who, _, _ in said if who and who.startswith("ForkPoolWorker-")}
    assert len(workers) == 2
    assert sorted(text for who, _, text in said if who in workers and text.startswith("worker says")) == [
        f"worker says {i}" for i in range(4)
    ]
    assert sorted(text for who, _, text in said if who in workers and text.startswith("w: worker logs")) == [
        f"w: worker logs {i}" for i in range(4)
    ]
    loader = [(stream, text) for who, stream, text in said if who == "loader"]
    assert loader[0] == ("stdout", "about to fail")
    assert loader[-1] == ("stderr", "RuntimeError: worker broke")  # its last words, as it ended
    assert said[-1] == (None, "stdout", "parent done")
    shown = nbw(repo, "logs", run_id, "-n", "2")
    assert [line.split(None, 1)[1] for line in shown.stdout.splitlines()] == [
        "stderr [loader] RuntimeError: worker broke",
        "stdout parent done",
    ]
