"""Inbound channels re-order each sender's items by sequence number, markers among the batches."""

from rayfun.runtime.channels import DRIVER, Channels


def test_items_are_released_in_sequence_order_per_sender():
    channels = Channels()
    assert list(channels.take(1, 2, [("t", "c")])) == []
    assert list(channels.take(1, 1, [("t", "b")])) == []
    assert list(channels.take(2, 0, [("t", "x")])) == [[("t", "x")]]  # another sender is not held back
    assert channels.early() == 2
    assert list(channels.take(1, 0, [("t", "a")])) == [[("t", "a")], [("t", "b")], [("t", "c")]]
    assert channels.early() == 0
    assert channels.expected(1) == 3
    assert channels.received() == {1: 3, 2: 1}


def test_a_marker_keeps_its_place_among_the_batches_and_counts_no_message():
    channels = Channels()
    assert list(channels.take(1, 1, 7)) == []  # marker 7 came early
    assert list(channels.take(1, 2, [("t", "after")])) == []
    assert list(channels.take(1, 0, [("t", "before")])) == [[("t", "before")], 7, [("t", "after")]]
    assert channels.received() == {1: 2}


def test_reset_forgets_every_channel_and_resumes_the_drivers():
    channels = Channels()
    channels.take(1, 0, [("t", "a")])
    channels.take(1, 5, [("t", "z")])
    channels.reset(driver_from=4)
    assert channels.received() == {DRIVER: 0} and channels.early() == 0
    assert channels.expected(1) == 0 and channels.expected(DRIVER) == 4
    assert list(channels.take(DRIVER, 3, [("t", "old")])) == []  # already read by the checkpoint: held, never due
    assert list(channels.take(DRIVER, 4, [("t", "b")])) == [[("t", "b")]]
    channels.reset()
    assert channels.received() == {}
