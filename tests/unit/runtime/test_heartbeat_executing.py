"""The heartbeat's list of executing actions counts deliveries: a redelivered copy of a
task (a thread pool runs it beside the first) must not take a running action off it."""

from __future__ import annotations

import threading

from backend.runtime import heartbeat


def test_a_second_delivery_leaving_does_not_drop_the_first() -> None:
    started, release = threading.Event(), threading.Event()

    def first() -> None:
        with heartbeat.executing(7):
            started.set()
            release.wait(10)

    worker = threading.Thread(target=first)
    worker.start()
    assert started.wait(10)
    with heartbeat.executing(7):  # the copy: finds it claimed, returns at once
        pass
    assert heartbeat.executing_now() == [7] and worker.is_alive()
    release.set()
    worker.join()
    assert heartbeat.executing_now() == []
