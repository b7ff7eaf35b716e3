"""Stand-ins for the mock upstream's unit tests."""

from __future__ import annotations


class FakeSocket:
    """Stands in for the client socket the mock shuts down when it drops a stream on purpose."""

    def __init__(self) -> None:
        self.shut = False

    def shutdown(self, how: int) -> None:
        self.shut = True
