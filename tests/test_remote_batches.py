"""How the relays of a remote stage (Ray) size their batches, each a round trip: a batch
short of its size waits a moment for more items (``Gathering``); once the input is
closed, each relay takes its share of what is left, counting what its siblings' batches
in flight still hold, so that all end together (``Tail``). On real channels, with real
threads as producers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from conftest import elapsed, wait_until
from pyper._channel import Channel
from pyper._engine._remote import Gathering, Tail


def produce(channel: Channel, count: int, every: float = 0.001) -> threading.Thread:
    """A thread that flushes ``count`` items one by one, ``every`` seconds apart, then closes."""

    def run() -> None:
        for x in range(count):
            channel.put([x])
            time.sleep(every)
        channel.close_send()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.timeout(10)
def test_a_batch_gathers_the_items_a_fast_producer_flushes_one_by_one() -> None:
    channel = Channel(capacity=64, senders=1, receivers=1)
    producer = produce(channel, 8)
    gathering = Gathering(channel, 1.0, Tail(0.0), 0)
    try:
        assert gathering.get(8) == list(range(8))  # one batch, not the first flush alone
        assert gathering.get(8) is None
    finally:
        producer.join()


def two_relays(channel: Channel, tail: Tail, seconds: float, feed: Callable[[], None]) -> dict[int, list[int]]:
    """What two relays, both parked for input, take in one ``get(16)`` each once ``feed()``
    has put items in the channel."""
    got: dict[int, list[int]] = {}

    def relay(index: int) -> None:
        got[index] = Gathering(channel, seconds, tail, index).get(16) or []

    relays = [threading.Thread(target=relay, args=(i,)) for i in (0, 1)]
    for r in relays:
        r.start()
    # Both have asked for input (waited for, not slept for: while a sibling is still starting,
    # a relay takes only its share of what has come, as it should).
    assert wait_until(lambda: not tail.elsewhere(channel), 5)
    feed()
    for r in relays:
        r.join()
    return got


@pytest.mark.timeout(10)
def test_idle_relays_gathering_at_once_share_what_comes() -> None:
    """A short run: both relays gather at its start; each gets about half, not one all."""
    channel = Channel(capacity=64, senders=1, receivers=2)
    producers: list[threading.Thread] = []
    # Items 20 ms apart: each comes while both relays wait for it. (1 ms apart, on a loaded
    # machine a relay woke after the next item was queued and took its share of what was
    # there, as it should, ending its batch: 3 to 9 of the 16 in the two first batches. One
    # relay taking all, the bug, still gives 16 and 0.)
    got = two_relays(channel, Tail(0.0), 1.0, lambda: producers.append(produce(channel, 16, every=0.02)))
    producers[0].join()
    assert sorted(got[0] + got[1]) == list(range(16))
    assert 5 <= len(got[0]) <= 11, got  # in turn, give or take what a thread's wake-up costs


@pytest.mark.timeout(10)
@pytest.mark.parametrize("closed", [True, False], ids=["then-closed", "still-open"])
def test_a_burst_that_comes_while_relays_wait_is_shared_out(closed: bool) -> None:
    """A process stage (or a producer that no relay waited for) flushes a whole batch at
    once: the first relay to wake must not take it all."""
    channel = Channel(capacity=64, senders=1, receivers=2)

    def burst() -> None:
        channel.put(list(range(16)))
        if closed:
            channel.close_send()

    got = two_relays(channel, Tail(0.01, cost=0.01), 0.05, burst)  # 10 ms calls: 8 is worth a call
    if not closed:
        channel.close_send()
    assert sorted(got[0] + got[1]) == list(range(16))
    assert len(got[0]) == len(got[1]) == 8, got


@pytest.mark.timeout(10)
@pytest.mark.parametrize("parked", [True, False], ids=["sibling-parked", "sibling-between-batches"])
def test_a_burst_that_comes_while_a_relay_gathers_is_shared_out(parked: bool) -> None:
    """A producer flushes one item, then a batch (a process stage in slow start): the
    relay that took the first and waits for more must not take the whole burst."""
    channel = Channel(capacity=64, senders=1, receivers=2)
    tail = Tail(0.01, cost=0.01)
    got: dict[int, list[int]] = {}

    def relay(index: int) -> None:
        got[index] = Gathering(channel, 0.2, tail, index).get(16) or []

    channel.put([0])
    first = threading.Thread(target=relay, args=(0,))
    first.start()
    assert wait_until(lambda: channel.queued == 0, 5)  # it holds item 0 and waits for more
    time.sleep(0.02)  # (in its wait for more, as a rule; if not, it finds the burst queued)
    second = threading.Thread(target=relay, args=(1,))
    if parked:
        second.start()
        assert wait_until(lambda: not tail.elsewhere(channel), 5)  # it has asked for input
        time.sleep(0.02)
    channel.put(list(range(1, 17)))
    first.join()
    if not parked:  # back from its call a moment later
        time.sleep(0.001)
        second.start()
    second.join()
    channel.close_send()
    assert sorted(got[0] + got[1]) == list(range(17))
    assert 7 <= len(got[0]) <= 10 and 7 <= len(got[1]) <= 10, got  # 9 and 8, give or take


@pytest.mark.timeout(10)
def test_while_a_sibling_has_a_batch_in_flight_a_relay_gathers_only_its_share() -> None:
    """Else the one gathering would take every item that comes while the other works."""
    channel = Channel(capacity=64, senders=1, receivers=2)
    tail = Tail(0.0)
    tail.arrive(1)  # here, and at work:
    tail.started(1, 1)
    producer = produce(channel, 16, every=0.005)
    try:
        with elapsed() as t:
            first = Gathering(channel, 1.0, tail, 0).get(16)
        # The sibling holds 1: with 2 items this relay holds its share of the 3 seen.
        assert first is not None and 2 <= len(first) <= 3, first
        assert t.elapsed < 0.5, t.elapsed
    finally:
        producer.join()
        rest = []
        while (more := channel.get(16)) is not None:
            rest += more
        assert sorted(first + rest) == list(range(16))


@pytest.mark.timeout(10)
def test_while_a_sibling_starts_a_relay_takes_its_share_of_what_is_there() -> None:
    """A short run's producer flushes all it made at once when no relay waits: the first
    relay to ask must not take it all while the other is still starting."""
    channel = Channel(capacity=64, senders=1, receivers=2)
    channel.put(list(range(16)))
    tail = Tail(0.0)
    assert Gathering(channel, 0.05, tail, 0).get(16) == list(range(8))
    assert Gathering(channel, 0.05, tail, 1).get(16) == list(range(8, 16))
    channel.close_send()


@pytest.mark.timeout(10)
def test_a_batch_waits_for_more_no_longer_than_its_seconds() -> None:
    channel = Channel(capacity=64, senders=1, receivers=1)
    channel.put([1, 2])
    with elapsed() as t:
        assert Gathering(channel, 0.1, Tail(0.0), 0).get(8) == [1, 2]
    assert 0.09 <= t.elapsed < 1.0, t.elapsed
    channel.close_send()


@pytest.mark.timeout(10)
def test_a_batch_goes_at_once_when_the_input_ends_or_holds_enough() -> None:
    channel = Channel(capacity=64, senders=1, receivers=1)
    channel.put(list(range(10)))
    gathering = Gathering(channel, 5.0, Tail(0.0), 0)
    with elapsed() as t:
        assert gathering.get(8) == list(range(8))
        channel.close_send()
        assert gathering.get(8) == [8, 9]  # the rest, without waiting out the 5 s
        assert gathering.get(8) is None
    assert t.elapsed < 1.0, t.elapsed


@pytest.mark.timeout(10)
def test_an_end_given_while_gathering_is_kept_and_the_channel_not_asked_again() -> None:
    """A retiring worker is given its end once: a relay that got it while gathering hands
    on what it gathered, then leaves, and takes nothing more."""
    channel = Channel(capacity=64, senders=1, receivers=2)
    channel.put([0, 1])
    asker = threading.Timer(0.2, channel.retire, (1,))
    asker.start()
    tail = Tail(0.0)
    tail.arrive(1)  # the other relay, at work on a batch of 10
    tail.started(1, 10)
    gathering = Gathering(channel, 5.0, tail, 0)
    try:
        with elapsed() as t:
            assert gathering.get(8) == [0, 1]
        assert t.elapsed < 2.5, t.elapsed  # the end came at 0.2 s: no waiting out the 5 s
        channel.put([2])
        assert gathering.get(8) is None
        assert channel.queued == 1  # left for the worker that stays
    finally:
        asker.join()
    channel.close_send()


def closed_input(queued: int, receivers: int) -> Channel:
    channel = Channel(capacity=64, senders=1, receivers=receivers)
    channel.put(list(range(queued)))
    channel.close_send()
    return channel


def test_while_input_may_still_come_a_relay_takes_the_batch_it_sized() -> None:
    channel = Channel(capacity=64, senders=1, receivers=2)
    channel.put(list(range(16)))
    assert Tail(0.0).size(0, 12, channel) == 12


def test_idle_relays_split_the_rest_evenly() -> None:
    tail = Tail(0.0)
    assert tail.size(0, 12, closed_input(16, receivers=2)) == 8
    assert tail.size(0, 5, closed_input(16, receivers=2)) == 5  # never more than it sized
    assert tail.size(0, 12, closed_input(17, receivers=2)) == 9  # rounded up: no item left over
    assert tail.size(0, 12, closed_input(1, receivers=2)) == 12  # (the one item there is)


def test_a_relay_counts_what_a_busy_sibling_still_holds() -> None:
    tail = Tail(0.0)
    tail.started(1, 10)
    tail.finished(1, 10, 1.0)  # 0.1 s per item, measured
    tail.started(1, 5)  # just now: 5 items of work left
    # 9 queued: 9 + 5 over two relays is 7 each, so this one takes 7 and leaves 2.
    assert tail.size(0, 12, closed_input(9, receivers=2)) == 7
    # 4 queued against the sibling's 5: this one takes them all, and still ends first.
    assert tail.size(0, 12, closed_input(4, receivers=2)) == 4


def test_a_sibling_far_into_its_batch_holds_only_what_it_has_not_done() -> None:
    tail = Tail(0.0)
    tail.started(1, 1)
    tail.finished(1, 1, 0.5)  # 0.5 s per item
    tail.started(1, 4)
    time.sleep(1.0)  # it has done about 2 of its 4 items (3 if the sleep overshoots by 0.5 s)
    # (8 + ~2) / 2, rounded up: 5 (not (8 + 4) / 2 = 6, as if it had done none).
    assert tail.size(0, 12, closed_input(8, receivers=2)) == 5


def test_with_no_cost_measured_a_busy_siblings_whole_batch_counts() -> None:
    tail = Tail(0.0)
    tail.started(1, 6)
    assert tail.size(0, 12, closed_input(10, receivers=2)) == 8  # (10 + 6) / 2


def test_idle_relays_fill_up_to_the_busy_ones_and_no_further() -> None:
    tail = Tail(0.0)
    tail.started(2, 10)  # three relays: one busy with 10 items, two free
    # 6 queued: the two free ones take 3 each, and end long before the busy one.
    assert tail.size(0, 12, closed_input(6, receivers=3)) == 3
    tail.started(1, 2)  # now one free, one holding 2, one holding 10
    # 6 queued: this one fills to the level of the one holding 2 and both go on to 4:
    # it takes 4, the other 2.
    assert tail.size(0, 12, closed_input(6, receivers=3)) == 4


def test_a_share_is_never_less_work_than_a_call_costs_to_make() -> None:
    # Trivial items, as the last run measured them: all 200 still go in one call.
    assert Tail(0.01, cost=1e-6).size(0, 500, closed_input(200, receivers=4)) == 500
    # 4 ms per item: half of 16 items is worth a call of its own.
    assert Tail(0.01, cost=0.004).size(0, 64, closed_input(16, receivers=2)) == 8
    # 1 ms per item: a share of 8 is not (8 ms); a call takes 10 ms of work.
    assert Tail(0.01, cost=0.001).size(0, 64, closed_input(16, receivers=2)) == 10


def test_while_more_may_come_a_share_of_what_came_or_as_much_as_a_busy_sibling_holds() -> None:
    open_input = Channel(capacity=64, senders=1, receivers=2)
    tail = Tail(0.0)
    tail.started(1, 4)  # the sibling took 4; this relay has gathered 3, and nothing waits
    assert tail.size(0, 8, open_input, held=3, seen=True) == 4  # one more: as many as it
    tail.finished(1, 4, 0.0)
    tail.started(1, 1)  # the sibling took 1: 2 of the 3 seen are this relay's share
    assert tail.size(0, 16, open_input, held=2, seen=True) == 2
    open_input.put(list(range(6)))  # 6 more came: (6 + 2 + 1) / 2, rounded up
    assert tail.size(0, 16, open_input, held=2, seen=True) == 5
    assert tail.size(0, 16, open_input, held=2) == 16  # not seen: more may come
    open_input.close_send()
