"""ReadFlow: independent reasons to stop reading, one transport pause."""

from __future__ import annotations

from broker.amqp.flow import ALARM, BROKEN, WRITES, ReadFlow


class FakeTransport:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.closing = False

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def is_closing(self) -> bool:
        return self.closing


def make() -> tuple[ReadFlow, FakeTransport]:
    flow, transport = ReadFlow(), FakeTransport()
    flow.attach(transport)  # type: ignore[arg-type]
    return flow, transport


def test_reading_resumes_only_when_every_reason_is_gone() -> None:
    flow, transport = make()
    flow.pause(WRITES)
    flow.pause(ALARM)
    flow.pause(WRITES)
    assert flow.paused and transport.calls == ["pause"]
    assert not flow.resume(WRITES)  # the alarm still holds it
    assert flow.paused and flow.holds(ALARM) and not flow.holds(WRITES)
    assert flow.resume(ALARM)
    assert not flow.paused and transport.calls == ["pause", "resume"]


def test_clearing_a_reason_that_was_not_set_changes_nothing() -> None:
    flow, transport = make()
    assert not flow.resume(ALARM)
    assert transport.calls == []


def test_a_closing_transport_is_not_resumed() -> None:
    flow, transport = make()
    flow.pause(BROKEN)
    transport.closing = True
    assert not flow.resume(BROKEN)
    assert transport.calls == ["pause"]
