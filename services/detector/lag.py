"""Up to when the detector has heard everything: the clock its ticks judge by.

A heartbeat is stamped with the time the detector reads it. A host is silent at time T
only if the detector has read everything sent to its partition up to T; a detector that
is behind (restarted onto a backlog, starved of CPU, reading one partition while another
waits) has not, and judging at the wall clock would suspect the hosts whose heartbeats
are merely queued — and fence them. So each heartbeat partition has a "heard until" time:
the moment of the last fetch whose high watermark the consumer has reached (everything
on the broker then has been handled). The detector's ticks judge at the earliest of its
partitions' times: while it is behind, judging waits; once caught up it is the present
again (within one fetch wait). A truly dead host is then found as soon as the detector
has caught up, never before it is proven silent.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MAX_POLLS = 64  # fetches remembered per partition while behind


@dataclass
class HeardUntil:
    """Per owned partition: the time up to which every record has been handled."""

    until: dict[int, float] = field(default_factory=dict)
    # Per partition, the (poll time, high watermark) of fetches not yet reached, oldest
    # first: when the consumer is behind, reaching an earlier fetch's watermark still moves
    # the partition's time up to that fetch, though newer fetches have come in since.
    polls: dict[int, deque[tuple[float, int]]] = field(default_factory=dict)

    def own(self, partitions: set[int], now: float) -> None:
        """Newly owned partitions start at `now`: their hosts get fresh windows then, and
        nothing counts as heard after it until the consumer has caught up with them."""
        for p in partitions:
            self.until.setdefault(p, now)

    def drop(self, partitions: set[int]) -> None:
        for p in partitions:
            self.until.pop(p, None)
            self.polls.pop(p, None)

    def fetched(self, partition: int, position: int, highwater: int | None, polled_at: float | None) -> None:
        """After handling a batch: once the consumer's position has reached the high
        watermark of a fetch, everything on the partition at that fetch's time is heard.
        Until then (records still queued) the partition's time stays where it was."""
        if partition not in self.until or highwater is None or polled_at is None:
            return
        polls = self.polls.setdefault(partition, deque())
        if not polls or polls[-1][0] < polled_at:
            polls.append((polled_at, highwater))
            if len(polls) > MAX_POLLS:
                polls.popleft()  # the oldest: its time is the earliest, the least lost
        while polls and polls[0][1] <= position:
            at, _ = polls.popleft()
            if at > self.until[partition]:
                self.until[partition] = at

    def judge_at(self, now: float) -> float:
        """The time ticks judge at: the earliest heard-until of the owned partitions,
        never later than now (the wall clock when nothing is owned)."""
        return min(now, *self.until.values()) if self.until else now

    def behind(self, now: float, more_than: float) -> dict[int, float]:
        """Partitions more than `more_than` seconds behind, with how far."""
        return {p: now - t for p, t in sorted(self.until.items()) if now - t > more_than}


class SeenHeartbeats:
    """The newest sequence number and send time heard from each host. A heartbeat older
    on both counts is a duplicate or an older one delivered late (a producer retry, a
    re-read after a rebalance, a replay) and says nothing about the host now: it is
    dropped before it can reset a silence. An executor that restarts counts from 1 again
    but sends later; a host whose clock steps back keeps counting up: both get through."""

    def __init__(self) -> None:
        self.newest: dict[str, tuple[int, float]] = {}

    def stale(self, host: str, seq: int, sent: float) -> bool:
        """True for a heartbeat not newer than what was heard; otherwise remember it."""
        last = self.newest.get(host)
        if last is None:
            self.newest[host] = (seq, sent)
            return False
        if seq <= last[0] and sent <= last[1]:
            return True
        self.newest[host] = (max(seq, last[0]), max(sent, last[1]))
        return False
