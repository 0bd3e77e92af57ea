"""The group committer's leader/follower protocol, with a fake ``send``
(no database): who sends, what goes in a group, in which order, within
which bounds, and what each caller gets when a group fails or its
deadline passes. The database side is tests/eventstore/test_group_commit.py.

A group is held "in flight" by a send that blocks on an Event, so which
requests queue behind it is decided by the test, not by timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from eventstore.group_commit import GroupCommitter, GroupFailed

#: A bound on every wait of these tests (seconds); none is reached when
#: the protocol works.
BOUND = 30.0


@dataclass(frozen=True)
class Req:
    name: str
    events: int = 1
    size: int = 10
    deadline: float = float("inf")


class FakeSend:
    """Records each group; blocks the groups whose first request's name is
    in ``hold`` until released; fails those named in ``fail``."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.hold: dict[str, threading.Event] = {}
        self.entered: dict[str, threading.Event] = {}
        self.fail: dict[str, BaseException] = {}
        self.lock = threading.Lock()

    def held(self, name: str) -> threading.Event:
        self.hold[name] = threading.Event()
        self.entered[name] = threading.Event()
        return self.hold[name]

    def __call__(self, requests: Sequence[Req]) -> list[str]:
        names = [r.name for r in requests]
        with self.lock:
            self.groups.append(names)
        first = names[0]
        if first in self.hold:
            self.entered[first].set()
            assert self.hold[first].wait(BOUND)
        for name in names:
            if name in self.fail:
                raise self.fail[name]
        return [f"done:{n}" for n in names]


class Caller(threading.Thread):
    def __init__(self, committer: GroupCommitter[Req, str], request: Req) -> None:
        super().__init__(daemon=True)
        self.committer = committer
        self.request = request
        self.result: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.committer.submit(self.request)
        except BaseException as exc:  # checked by the test
            self.error = exc

    def outcome(self) -> str | BaseException:
        self.join(BOUND)
        assert not self.is_alive(), f"{self.request.name} hung"
        if self.error is not None:
            return self.error
        assert self.result is not None
        return self.result


def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.001)


@contextmanager
def in_flight(
    committer: GroupCommitter[Req, str], send: FakeSend, name: str = "lead"
) -> Iterator[Caller]:
    """A group of one request ``name`` held in flight for the body."""
    release = send.held(name)
    leader = Caller(committer, Req(name))
    leader.start()
    assert send.entered[name].wait(BOUND)
    try:
        yield leader
    finally:
        release.set()


def queue(committer: GroupCommitter[Req, str], *requests: Req) -> list[Caller]:
    """Start one caller per request, each queued before the next starts
    (so the queue's order is the requests' order)."""
    callers = []
    for request in requests:
        before = committer.waiting
        caller = Caller(committer, request)
        caller.start()
        # (queued, or already given up: a short deadline may pass at once)
        until(
            lambda before=before, caller=caller: (  # type: ignore[misc]
                committer.waiting == before + 1 or not caller.is_alive()
            )
        )
        callers.append(caller)
    return callers


def make(send: FakeSend, **bounds: int) -> GroupCommitter[Req, str]:
    bounds.setdefault("max_events", 1000)
    bounds.setdefault("max_bytes", 10_000)
    return GroupCommitter(send, **bounds)


def test_a_lone_caller_sends_at_once_alone() -> None:
    send = FakeSend()
    committer = make(send)
    assert committer.submit(Req("a")) == "done:a"
    assert committer.submit(Req("b")) == "done:b"
    assert send.groups == [["a"], ["b"]]
    assert (committer.groups, committer.requests) == (2, 2)


def test_callers_arriving_during_a_group_go_together_in_order() -> None:
    send = FakeSend()
    committer = make(send)
    with in_flight(committer, send) as leader:
        followers = queue(committer, *(Req(f"f{i}") for i in range(5)))
        assert send.groups == [["lead"]]  # nobody sends while a group is in flight
    assert leader.outcome() == "done:lead"
    assert [f.outcome() for f in followers] == [f"done:f{i}" for i in range(5)]
    assert send.groups == [["lead"], ["f0", "f1", "f2", "f3", "f4"]]
    assert committer.waiting == 0


def test_groups_stay_within_the_bounds_and_keep_the_order() -> None:
    send = FakeSend()
    committer = make(send, max_events=10, max_bytes=100)
    with in_flight(committer, send):
        followers = queue(
            committer,
            Req("a", events=4),
            Req("b", events=4),
            Req("c", events=4),  # would make 12 events: next group
            Req("d", size=95),  # would make 105 bytes: next group
            Req("e", events=50),  # too big for any group: alone
            Req("f"),
        )
    assert all(isinstance(f.outcome(), str) for f in followers)
    assert send.groups == [["lead"], ["a", "b"], ["c"], ["d"], ["e"], ["f"]]


def test_a_failed_group_fails_each_of_its_callers_and_no_other() -> None:
    send = FakeSend()
    committer = make(send, max_events=3)
    boom = RuntimeError("the connection went away")
    send.fail["b"] = GroupFailed(boom, sent=True, in_doubt=True)
    with in_flight(committer, send):
        followers = queue(committer, Req("a"), Req("b"), Req("c"), Req("d"))
    outcomes = [f.outcome() for f in followers]
    assert send.groups == [["lead"], ["a", "b", "c"], ["d"]]
    for failed in outcomes[:3]:
        assert isinstance(failed, GroupFailed)
        assert (failed.cause, failed.sent, failed.in_doubt, failed.group_size) == (
            boom,
            True,
            True,
            3,
        )
    assert outcomes[3] == "done:d"
    assert committer.submit(Req("later")) == "done:later"


def test_an_unexpected_error_in_the_leader_leaves_its_followers_in_doubt() -> None:
    """Anything but GroupFailed out of send: the leader's caller gets it;
    its followers get a failure in doubt (the group may have committed); the
    next caller still finds a leader."""
    send = FakeSend()
    committer = make(send)
    send.fail["x"] = KeyboardInterrupt()
    with in_flight(committer, send):
        leader_x, follower = queue(committer, Req("x"), Req("y"))
    # x leads the second group (x, y): its send raises KeyboardInterrupt.
    assert isinstance(leader_x.outcome(), KeyboardInterrupt)
    failed = follower.outcome()
    assert isinstance(failed, GroupFailed)
    assert isinstance(failed.cause, KeyboardInterrupt)
    assert (failed.sent, failed.in_doubt) == (True, True)
    assert committer.submit(Req("z")) == "done:z"


def test_a_caller_whose_deadline_passes_in_the_queue_was_never_sent() -> None:
    send = FakeSend()
    committer = make(send)
    with in_flight(committer, send):
        (late,) = queue(committer, Req("late", deadline=time.monotonic() + 0.2))
        failed = late.outcome()  # while the group is still in flight
        assert isinstance(failed, GroupFailed)
        assert (failed.cause, failed.sent, failed.in_doubt) == (None, False, False)
        assert committer.waiting == 0
        (on_time,) = queue(committer, Req("on-time"))
    assert on_time.outcome() == "done:on-time"
    assert all("late" not in group for group in send.groups)


def test_a_caller_whose_deadline_passes_in_flight_is_in_doubt() -> None:
    send = FakeSend()
    committer = make(send)
    release = send.held("slow")
    with in_flight(committer, send):
        # (the margin only has to cover the hand-over to the next leader)
        slow, impatient = queue(
            committer, Req("slow"), Req("impatient", deadline=time.monotonic() + 3.0)
        )
    assert send.entered["slow"].wait(BOUND)  # the group (slow, impatient) is in flight
    failed = impatient.outcome()
    assert isinstance(failed, GroupFailed)
    assert (failed.cause, failed.sent, failed.in_doubt) == (None, True, True)
    release.set()
    assert slow.outcome() == "done:slow"
    assert send.groups == [["lead"], ["slow", "impatient"]]


def test_callers_queued_behind_one_that_gave_up_still_go() -> None:
    send = FakeSend()
    committer = make(send)
    with in_flight(committer, send):
        expiring, after = queue(
            committer, Req("expiring", deadline=time.monotonic() + 0.3), Req("after")
        )
        until(lambda: not expiring.is_alive())  # gave up while queued
        assert committer.waiting == 1
    failed = expiring.outcome()
    assert isinstance(failed, GroupFailed) and not failed.sent
    assert after.outcome() == "done:after"
    assert send.groups == [["lead"], ["after"]]


def test_with_two_groups_in_flight_a_third_caller_queues() -> None:
    send = FakeSend()
    committer = make(send, max_groups=2)
    with in_flight(committer, send, "one"):
        with in_flight(committer, send, "two"):
            assert committer.waiting == 0  # both led at once
            third, fourth = queue(committer, Req("three"), Req("four"))
            assert send.groups == [["one"], ["two"]]
        # "two" ended (and "one" is still in flight): the queue went as one group.
        assert (third.outcome(), fourth.outcome()) == ("done:three", "done:four")
        assert send.groups == [["one"], ["two"], ["three", "four"]]


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        GroupCommitter(FakeSend(), max_events=0, max_bytes=1)
