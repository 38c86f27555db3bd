"""Server-Sent Events, read incrementally: bytes in as they arrive, whole
events out, each with its raw bytes so they can be forwarded untouched."""

from __future__ import annotations

from typing import NamedTuple


class Event(NamedTuple):  # a tuple: made once per event of every stream
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
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        *raws, self._buffer = (self._buffer + chunk).split(b"\n\n")
        if len(self._buffer) > self.max_event:
            raise EventTooLarge(f"a stream event over {self.max_event} bytes")
        events: list[Event] = []
        for raw in raws:
            if raw.startswith(b"data: ") and b"\n" not in raw:  # the usual: one data line
                events.append(Event(None, raw[6:], raw + b"\n\n"))
                continue
            name, data = None, []
            for line in raw.split(b"\n"):
                if line.startswith(b"data:"):
                    data.append(line[5:].removeprefix(b" "))
                elif line.startswith(b"event:"):
                    name = line[6:].strip().decode("utf-8", "replace")
            if data or name:
                events.append(Event(name, b"\n".join(data), raw + b"\n\n"))
        return events
