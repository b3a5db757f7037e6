"""Delivery through the outbox, against a real local HTTP server, with an injected clock."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from nbmonitor.config import NotifierConfig, NotifierStore
from nbmonitor.events import Event
from nbmonitor.outbox import Sender, claim_event, last_result
from nbmonitor.repo import Repo

from .helpers import FakeClock
from .records import sample
from .servers import Answer, HttpRecorder, free_port


def webhook(repo: Repo, url: str, **kwargs: Any) -> NotifierConfig:
    return NotifierStore(repo).add(NotifierConfig.create("webhook", {"url": url}, **kwargs))


def event(n: int = 0, kind: str = "crashed", at: float = 1_800_000_000.0) -> Event:
    run = sample(id=f"{n:032x}", name=f"run-{n}")
    return Event(kind, "end", run, at, 12.0, None, "test")


def claim(repo: Repo, e: Event) -> bool:
    return claim_event(repo, e, [n for n in NotifierStore(repo).load() if n.wants(e.kind)])


@pytest.fixture
def sender(repo: Repo, clock: FakeClock) -> Sender:
    return Sender(repo, clock=clock.mono, wall=clock.wall, timeout=0.5, orphan_after=30)


def names(http: HttpRecorder, status: int = 200) -> list[str]:
    return [r.json()["run"]["name"] for r in http.answered(status)]


def test_each_event_reaches_each_notifier_once(repo: Repo, http: HttpRecorder, sender: Sender) -> None:
    webhook(repo, f"{http.url}/a")
    webhook(repo, f"{http.url}/b")
    assert claim(repo, event(1))
    assert not claim(repo, event(1))  # a second claimer of the same event loses
    sender.deliver()
    sender.deliver()
    assert sorted(r.path for r in http.requests) == ["/a", "/b"]
    assert not list(repo.outbox_dir.rglob("*.json"))


def test_a_notifier_only_gets_the_events_it_wants(repo: Repo, http: HttpRecorder, sender: Sender) -> None:
    webhook(repo, f"{http.url}/x", events="finished")
    claim(repo, event(1, "crashed"))
    claim(repo, event(2, "finished"))
    sender.deliver()
    assert names(http) == ["run-2"]


def test_a_500_is_retried_after_a_backoff_and_delivered_once(
    repo: Repo, http: HttpRecorder, sender: Sender, clock: FakeClock
) -> None:
    config = webhook(repo, f"{http.url}/h")
    http.script = [Answer(500, "boom")]
    claim(repo, event(1))
    (failed,) = sender.deliver()
    assert (failed.ok, failed.retry_in) == (False, 1.0)
    assert last_result(repo, config.id)["pending"] == 1  # type: ignore[index]
    clock.advance(0.5)
    assert sender.deliver() == []  # still backing off
    clock.advance(0.5)
    (delivered,) = sender.deliver()
    assert delivered.ok
    assert [r.status for r in http.requests] == [500, 200]
    assert last_result(repo, config.id)["ok"] is True  # type: ignore[index]
    clock.advance(100)
    assert sender.deliver() == []


def test_backoff_doubles_up_to_its_cap(repo: Repo, http: HttpRecorder, clock: FakeClock) -> None:
    sender = Sender(repo, clock=clock.mono, wall=clock.wall, max_backoff=4)
    webhook(repo, f"{http.url}/h")
    http.default = Answer(503, "down")
    claim(repo, event(1))
    delays = []
    for _ in range(5):
        (result,) = sender.deliver()
        delays.append(result.retry_in)
        clock.advance(result.retry_in or 0)
    assert delays == [1, 2, 4, 4, 4]


def test_a_refused_connection_is_retried_until_the_endpoint_is_up(
    repo: Repo, sender: Sender, clock: FakeClock
) -> None:
    port = free_port()
    webhook(repo, f"http://127.0.0.1:{port}/h")
    claim(repo, event(1))
    (refused,) = sender.deliver()
    assert "cannot reach" in refused.answer
    late = HttpRecorder(port)
    try:
        clock.advance(1)
        (delivered,) = sender.deliver()
    finally:
        late.close()
    assert delivered.ok
    assert names(late) == ["run-1"]


def test_429_is_retried_no_sooner_than_retry_after(
    repo: Repo, http: HttpRecorder, sender: Sender, clock: FakeClock
) -> None:
    webhook(repo, f"{http.url}/h")
    http.script = [Answer(429, "slow down", {"Retry-After": "5"})]
    claim(repo, event(1))
    assert sender.deliver()[0].retry_in == 5
    clock.advance(4.9)
    assert sender.deliver() == []
    clock.advance(0.1)
    assert sender.deliver()[0].ok
    assert [r.status for r in http.requests] == [429, 200]


def test_a_server_that_never_answers_times_out_and_the_retry_delivers(
    repo: Repo, http: HttpRecorder, sender: Sender, clock: FakeClock
) -> None:
    webhook(repo, f"{http.url}/h")
    http.script = [Answer(delay=2.0)]
    claim(repo, event(1))
    (timed_out,) = sender.deliver()
    assert "timed out" in timed_out.answer
    clock.advance(1)
    assert sender.deliver()[0].ok
    assert len(http.answered()) == 2  # the first answer came after the client had given up
    assert http.requests[1].status == 200


def test_a_404_is_a_recorded_permanent_error_and_not_retried(
    repo: Repo, http: HttpRecorder, sender: Sender, clock: FakeClock
) -> None:
    config = webhook(repo, f"{http.url}/gone")
    http.default = Answer(404, "no such hook")
    claim(repo, event(1))
    (result,) = sender.deliver()
    assert (result.ok, result.retry_in) == (False, None)
    clock.advance(3600)
    assert sender.deliver() == []
    assert len(http.requests) == 1
    recorded = last_result(repo, config.id)
    assert recorded is not None
    assert recorded["ok"] is False
    assert "HTTP 404" in recorded["answer"]


def test_one_failing_notifier_neither_delays_nor_duplicates_another(
    repo: Repo, http: HttpRecorder, sender: Sender, clock: FakeClock
) -> None:
    down = HttpRecorder()
    down.default = Answer(500, "down")
    try:
        webhook(repo, f"{down.url}/down")
        webhook(repo, f"{http.url}/up")
        claim(repo, event(1))
        claim(repo, event(2))
        sender.deliver()
        assert sorted(names(http)) == ["run-1", "run-2"]
        for _ in range(5):
            clock.advance(60)
            sender.deliver()
        assert sorted(names(http)) == ["run-1", "run-2"]
        assert len(down.requests) >= 5
    finally:
        down.close()


def test_transient_failures_give_up_after_a_bounded_time(
    repo: Repo, http: HttpRecorder, clock: FakeClock
) -> None:
    sender = Sender(repo, clock=clock.mono, wall=clock.wall, give_up_after=120, max_backoff=60)
    config = webhook(repo, f"{http.url}/h")
    http.default = Answer(503, "down")
    claim(repo, event(1, at=clock.wall()))
    for _ in range(10):
        sender.deliver()
        clock.advance(60)
    attempts = len(http.requests)
    assert 2 <= attempts <= 5
    assert "gave up after 120 s" in last_result(repo, config.id)["answer"]  # type: ignore[index]
    assert not list(repo.outbox_dir.rglob("*.json"))


def test_a_wall_clock_jump_neither_freezes_nor_expires_deliveries(
    repo: Repo, http: HttpRecorder, clock: FakeClock
) -> None:
    sender = Sender(repo, clock=clock.mono, wall=clock.wall, give_up_after=120)
    webhook(repo, f"{http.url}/h")
    http.default = Answer(503, "down")
    claim(repo, event(1, at=clock.wall()))
    sender.deliver()  # fails: retry in 1 s
    clock.jump_wall(-3600)
    clock.advance(1)
    sender.deliver()  # on time, not an hour late
    assert len(http.requests) == 2
    clock.jump_wall(+7200)  # now an hour ahead of when the event happened
    clock.advance(2)
    http.default = Answer(200, "ok")
    sender.deliver()
    assert names(http) == ["run-1"]  # not given up: it has been failing for 3 s, not an hour


def test_many_events_at_once_become_one_digest(repo: Repo, http: HttpRecorder, sender: Sender) -> None:
    webhook(repo, f"{http.url}/h")
    for n in range(30):
        claim(repo, event(n))
    sender.deliver()
    (request,) = http.requests
    body = request.json()
    assert body["event"] == "digest"
    assert body["text"].startswith("30 runs need attention:")
    assert "... and 10 more" in body["text"]
    assert sorted(e["run"]["name"] for e in body["events"]) == sorted(f"run-{n}" for n in range(30))


def test_a_digest_resent_after_a_lost_answer_keeps_its_key_and_its_events(
    repo: Repo, http: HttpRecorder, clock: FakeClock
) -> None:
    # The endpoint takes the digest, but its answer never comes back; more events queue, and a
    # new sender (a restarted watcher) sends again. The key was a hash of whatever was pending,
    # so the resend had more events and a new key: a receiver that drops repeated keys got both.
    webhook(repo, f"{http.url}/h")
    for n in range(4):
        claim(repo, event(n))
    http.script = [Answer(200, "late", delay=2.0)]
    Sender(repo, clock=clock.mono, wall=clock.wall, timeout=0.3).deliver()
    for n in range(4, 6):
        claim(repo, event(n))
    Sender(repo, clock=clock.mono, wall=clock.wall, timeout=5).deliver()
    first, again, *rest = http.requests
    assert again.headers["Idempotency-Key"] == first.headers["Idempotency-Key"]
    assert again.headers["Idempotency-Key"].startswith("digest-")
    assert again.body == first.body
    assert sorted(e["run"]["name"] for e in again.json()["events"]) == [f"run-{n}" for n in range(4)]
    assert sorted(r.json()["run"]["name"] for r in rest) == ["run-4", "run-5"]  # then the rest, on its own
    assert not list(repo.outbox_dir.rglob("*.json"))  # the digest's record is gone too


def test_a_few_events_are_sent_one_by_one(repo: Repo, http: HttpRecorder, sender: Sender) -> None:
    webhook(repo, f"{http.url}/h")
    for n in range(3):
        claim(repo, event(n))
    sender.deliver()
    assert sorted(names(http)) == ["run-0", "run-1", "run-2"]


def test_pending_files_of_a_claimer_that_lost_are_never_sent(
    repo: Repo, http: HttpRecorder, sender: Sender
) -> None:
    config = webhook(repo, f"{http.url}/h")
    e = event(1)
    assert claim(repo, e)
    loser = repo.path / "outbox" / config.id / f"{e.run.id}.end.{'f' * 32}.json"
    loser.write_text(json.dumps(e.to_dict() | {"nonce": "f" * 32}))  # a loser that died before cleaning up
    sender.deliver()
    assert len(http.requests) == 1
    assert not loser.exists()


def test_a_claimer_that_died_before_claiming_is_claimed_for_and_delivered_later(
    repo: Repo, http: HttpRecorder, sender: Sender, clock: FakeClock
) -> None:
    config = webhook(repo, f"{http.url}/h")
    e = event(1, at=clock.wall())
    folder = repo.path / "outbox" / config.id
    folder.mkdir(parents=True)
    (folder / f"{e.run.id}.end.{'a' * 32}.json").write_text(json.dumps(e.to_dict() | {"nonce": "a" * 32}))
    sender.deliver()
    assert http.requests == []  # its claimer may still be at work
    clock.advance(31)
    sender.deliver()
    assert names(http) == ["run-1"]
    assert repo.read_claim(e.run.id, "end")["nonce"] == "a" * 32


def test_two_senders_on_one_outbox_send_each_event_once(repo: Repo, http: HttpRecorder) -> None:
    webhook(repo, f"{http.url}/h")
    for n in range(40):
        claim(repo, event(n))
    senders = [Sender(repo, digest_at=1000) for _ in range(2)]
    barrier = threading.Barrier(2)

    def send(sender: Sender) -> None:
        barrier.wait()
        sender.deliver()

    threads = [threading.Thread(target=send, args=(p,)) for p in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(names(http)) == sorted(f"run-{n}" for n in range(40))


BAD_PENDING = {
    "truncated": "{trunc",
    # Found by hypothesis: a key of another type reached Repo.claim and broke the delivery loop.
    "key-a-list": json.dumps(event(1).to_dict() | {"key": ["end"], "nonce": "b" * 32}),
    "key-a-path": json.dumps(event(1).to_dict() | {"key": "../end", "nonce": "b" * 32}),
    "event-unknown": json.dumps(event(1).to_dict() | {"event": "exploded", "nonce": "b" * 32}),
    "at-a-bool": json.dumps(event(1).to_dict() | {"at": True, "nonce": "b" * 32}),
}


@pytest.mark.parametrize("content", BAD_PENDING.values(), ids=BAD_PENDING.keys())
def test_a_bad_pending_file_is_set_aside_with_a_warning(
    repo: Repo,
    http: HttpRecorder,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    content: str,
) -> None:
    config = webhook(repo, f"{http.url}/h")
    folder = repo.path / "outbox" / config.id
    folder.mkdir(parents=True)
    bad = folder / f"{'1' * 32}.end.{'b' * 32}.json"
    bad.write_text(content)
    claim(repo, event(2))
    # orphan_after=0: a pending file nobody claimed is claimed at once, so a bad key reaches the claim.
    Sender(repo, clock=clock.mono, wall=clock.wall, timeout=0.5, orphan_after=0).deliver()
    assert names(http) == ["run-2"]
    assert str(bad) in caplog.text
    assert (folder / f".bad-{bad.name}").exists()
    assert not bad.exists()


@pytest.mark.parametrize("where", ["event", "run"])
def test_a_pending_file_of_a_newer_format_is_left_for_a_newer_nbmonitor(
    repo: Repo, http: HttpRecorder, sender: Sender, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    config = webhook(repo, f"{http.url}/h")
    folder = repo.path / "outbox" / config.id
    folder.mkdir(parents=True)
    data = event(1).to_dict() | {"nonce": "b" * 32}
    if where == "event":
        data["format"] = 2
    else:
        data["run"]["format"] = 2
    newer = folder / f"{'1' * 32}.end.{'b' * 32}.json"
    newer.write_text(json.dumps(data))
    claim(repo, event(2))
    sender.deliver()
    sender.deliver()
    assert names(http) == ["run-2"]
    assert newer.exists()  # untouched: not sent, not set aside
    assert [r.getMessage() for r in caplog.records if "newer" in r.getMessage()] == [
        f"leaving pending delivery {newer} to a newer nbmonitor: format 2 is newer than this nbmonitor "
        + ("understands (1)" if where == "event" else "understands (1); upgrade nbmonitor")
    ]


def test_removing_or_disabling_a_notifier_drops_what_waits_for_it(
    repo: Repo, http: HttpRecorder, sender: Sender
) -> None:
    store = NotifierStore(repo)
    one, two = webhook(repo, f"{http.url}/1"), webhook(repo, f"{http.url}/2")
    claim(repo, event(1))
    store.remove(one.id)
    store.update(two.id, enabled=False)
    store.update(two.id, enabled=True)
    sender.deliver()
    assert http.requests == []
