"""Server-Sent Events, read incrementally: bytes in as they arrive, whole
events out, each with its raw bytes so they can be forwarded untouched."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    name: str | None
    data: bytes
    raw: bytes


class EventTooLarge(ValueError):
    """An event grew past the reader's limit without ending."""


class EventReader:
    def __init__(self, max_event: int = 16 * 1024 * 1024) -> None:
        self._buffer = b""
        self.max_event = max_event

    def feed(self, chunk: bytes) -> list[Event]:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        if len(self._buffer) > self.max_event and b"\n\n" not in self._buffer:
            raise EventTooLarge(f"a stream event over {self.max_event} bytes")
        events: list[Event] = []
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                return events
            raw, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
            name, data = None, []
            for line in raw.split(b"\n"):
                if line.startswith(b"data:"):
                    data.append(line[5:].removeprefix(b" "))
                elif line.startswith(b"event:"):
                    name = line[6:].strip().decode("utf-8", "replace")
            if data or name:
                events.append(Event(name, b"\n".join(data), raw))
