"""Group commit: concurrent appends of one process share a statement, a
transaction and a WAL flush.

Leader and followers, no timer: a caller that finds no group in flight
becomes the leader and sends what is queued (at first, only its own
request: a lone writer never waits for company). Callers that arrive while
a group is in flight queue up; when the group returns, its leader hands
each member its own outcome and makes the first caller still queued the
next leader, which sends everything queued by then as one group. The more
callers, the bigger the groups, and each group costs one round trip and
one commit.

This module knows nothing of SQL: ``send`` runs a group (eventstore.writing
gives it utcp.append_group()) and answers one outcome per request, or
raises :class:`GroupFailed` when the call failed as a whole. What each
outcome or failure means for its caller is the writer's business
(eventstore.outcomes).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, Generic, Protocol, TypeVar

__all__ = ["GroupCommitter", "GroupFailed", "GroupRequest"]


class GroupRequest(Protocol):
    """What the committer needs to know of a request."""

    @property
    def events(self) -> int: ...

    @property
    def size(self) -> int: ...

    @property
    def deadline(self) -> float: ...


R = TypeVar("R", bound=GroupRequest)
Out = TypeVar("Out")


class GroupFailed(Exception):
    """The group call failed as a whole, or this caller's budget ran out.

    ``cause``: what failed the call (None: the caller's deadline passed
    before its group answered). ``sent``: this request may have reached the
    database; ``in_doubt``: it may have been committed with nobody knowing
    (the connection was lost after the statement was sent, or the caller
    stopped waiting for an answer)."""

    def __init__(self, cause: BaseException | None, *, sent: bool, in_doubt: bool) -> None:
        super().__init__(str(cause) if cause is not None else "deadline passed")
        self.cause = cause
        self.sent = sent
        self.in_doubt = in_doubt
        #: requests in the failed group (0: none was sent)
        self.group_size = 0


#: The longest a waiting caller sleeps before it looks at its deadline again.
_MAX_WAIT: Final = 3600.0

# A ticket's states.
_QUEUED: Final = 0  # waiting in the queue
_LEAD: Final = 1  # made leader: sends the next group
_SENT: Final = 2  # in a group in flight
_DONE: Final = 3  # outcome or failure delivered
_GONE: Final = 4  # the caller stopped waiting (deadline)


class _Ticket(Generic[R, Out]):
    __slots__ = ("failure", "outcome", "request", "state", "wake")

    def __init__(self, request: R) -> None:
        self.request = request
        self.state = _QUEUED
        self.outcome: Out | None = None
        self.failure: GroupFailed | None = None
        self.wake = threading.Event()


class GroupCommitter(Generic[R, Out]):
    """Shares one group call among the concurrent callers of :meth:`submit`.

    ``send(requests)`` runs one group and returns one outcome per request,
    in order, or raises :class:`GroupFailed` (anything else it raises counts
    as a failure with the group in doubt). A group holds at most
    ``max_events`` events and ``max_bytes`` encoded bytes, and always at
    least one request. ``max_groups``: groups in flight at once.
    Thread-safe.
    """

    def __init__(
        self,
        send: Callable[[Sequence[R]], Sequence[Out]],
        *,
        max_events: int,
        max_bytes: int,
        max_groups: int = 1,
    ) -> None:
        if max_events < 1 or max_bytes < 1 or max_groups < 1:
            raise ValueError("group bounds must be positive")
        self._send = send
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._max_groups = max_groups
        self._lock = threading.Lock()
        self._queue: deque[_Ticket[R, Out]] = deque()
        self._in_flight = 0  # groups being sent, or leaders about to send one
        #: groups sent and requests in them, since the start (for tests and
        #: the benchmark: requests / groups is the mean group size)
        self.groups = 0
        self.requests = 0

    @property
    def waiting(self) -> int:
        """Requests queued for the next group now."""
        with self._lock:
            return len(self._queue)

    def submit(self, request: R) -> Out:
        """Send ``request`` in the next group and return its outcome; raise
        :class:`GroupFailed` if that group failed as a whole or the
        request's deadline passed first."""
        ticket: _Ticket[R, Out] = _Ticket(request)
        with self._lock:
            if self._in_flight < self._max_groups:
                # Nothing to wait for (the queue is empty: a queued ticket
                # always has a leader to come): lead at once.
                self._in_flight += 1
                ticket.state = _LEAD
            else:
                self._queue.append(ticket)
        if ticket.state != _LEAD:
            self._wait(ticket)
        if ticket.state == _LEAD:
            self._lead(ticket)
        if ticket.failure is not None:
            raise ticket.failure
        assert ticket.outcome is not None
        return ticket.outcome

    def _wait(self, ticket: _Ticket[R, Out]) -> None:
        """Until this ticket is done or made leader, or its deadline passes."""
        while True:
            remaining = ticket.request.deadline - time.monotonic()
            # (Event.wait refuses an infinite timeout: wake up now and then)
            woken = remaining > 0 and ticket.wake.wait(min(remaining, _MAX_WAIT))
            with self._lock:
                if ticket.state in (_DONE, _LEAD):
                    return
                if not woken and time.monotonic() >= ticket.request.deadline:
                    sent = ticket.state == _SENT
                    if not sent:
                        self._queue.remove(ticket)
                    ticket.state = _GONE
                    ticket.failure = GroupFailed(None, sent=sent, in_doubt=sent)
                    return

    def _take(self, leader: _Ticket[R, Out]) -> list[_Ticket[R, Out]]:
        """The leader's group: itself, then what is queued, in order, within
        the bounds (under the lock). A ticket whose deadline passed is
        failed as unsent instead, the leader's own too (then no group)."""
        now = time.monotonic()
        if leader.request.deadline <= now:
            leader.state = _DONE
            leader.failure = GroupFailed(None, sent=False, in_doubt=False)
            return []
        leader.state = _SENT
        group = [leader]
        events, size = leader.request.events, leader.request.size
        while self._queue:
            ticket = self._queue[0]
            request = ticket.request
            if request.deadline <= now:
                self._queue.popleft()
                ticket.state = _DONE
                ticket.failure = GroupFailed(None, sent=False, in_doubt=False)
                ticket.wake.set()
                continue
            if events + request.events > self._max_events or size + request.size > self._max_bytes:
                break
            self._queue.popleft()
            ticket.state = _SENT
            group.append(ticket)
            events += request.events
            size += request.size
        return group

    def _lead(self, leader: _Ticket[R, Out]) -> None:
        with self._lock:
            group = self._take(leader)
            if group:
                self.groups += 1
                self.requests += len(group)
        outcomes: Sequence[Out] = ()
        failure: GroupFailed | None = None
        try:
            if group:
                try:
                    outcomes = self._send([t.request for t in group])
                    if len(outcomes) != len(group):
                        raise RuntimeError(f"{len(outcomes)} outcomes for a group of {len(group)}")
                except GroupFailed as exc:
                    failure = exc
                    failure.group_size = len(group)
                except BaseException as exc:
                    # Not the sender's own report: whatever happened, the
                    # group may have been committed.
                    failure = GroupFailed(exc, sent=True, in_doubt=True)
                    failure.group_size = len(group)
                    raise
        finally:
            with self._lock:
                for i, ticket in enumerate(group):
                    if ticket.state == _GONE:
                        continue  # its caller stopped waiting
                    if failure is not None:
                        ticket.failure = failure
                    else:
                        ticket.outcome = outcomes[i]
                    ticket.state = _DONE
                    if ticket is not leader:
                        ticket.wake.set()
                if self._queue:
                    # The next group's leader: the first caller still queued.
                    after = self._queue.popleft()
                    after.state = _LEAD
                    after.wake.set()
                else:
                    self._in_flight -= 1
