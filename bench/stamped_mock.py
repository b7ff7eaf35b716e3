"""The bundled mock upstream for requests that cannot carry `"mock": {...}`: pacing by path, time in the text.

    python -m bench.stamped_mock --port N --paced-chunks 20 --paced-delay 0.02
        [--events-chunks 400 --events-delay 0.0025]

A translated Responses request reaches its upstream as a chat body that Sluice built, with no
unknown field passed on, so the bench cannot pace it with `"mock": {...}`; and the Responses
events made from the chat chunks do not carry the mock's `mock_ts`. This wraps the bundled
mock (app.mock_upstream.MockUpstream, unchanged) so that:

- the path picks the pacing: `/short/v1/...` streams 2 chunks at once (as the first-event
  measurement asks the plain mock for), `/paced/v1/...` streams `--paced-chunks` chunks
  `--paced-delay` s apart (as the forwarding-lag measurement does), `/events/v1/...` `--events-chunks`
  chunks `--events-delay` s apart (as the per-event cost measurement does);
- every streamed chat chunk with text gets its own `mock_ts` at the head of that text
  (`"content": "ts=<mock_ts> Hello "`), which a translation copies into the
  `response.output_text.delta` it makes, so the client reads when the mock produced each delta;
  likewise the text of every Messages `text_delta` (the mock's `/v1/messages`, for Sluice's chat
  streams translated from an Anthropic upstream).

The stamp is a byte substitution on the event the mock is about to send, after it set
`mock_ts`: its few microseconds count against the translated stream, never for it.
"""

from __future__ import annotations

import argparse
import re
import socket
from collections.abc import Callable, Iterable, Iterator

from gevent.pywsgi import WSGIHandler, WSGIServer

from app.mock_upstream import MockUpstream, Options

STAMP_PREFIX = "ts="  # the text of a stamped delta starts "ts=<mock_ts> "
_MOCK_TS = re.compile(rb'"mock_ts": ([0-9.]+)')
_TEXTS = (b'"content": "', b'"type": "text_delta", "text": "')  # a chat chunk's text, a Messages text delta's


def stamp(event: bytes) -> bytes:
    """A chat chunk or Messages text delta event with its `mock_ts` at the head of its text; anything else
    unchanged."""
    found = _MOCK_TS.search(event)
    text = next((marker for marker in _TEXTS if marker in event), None)
    if found is None or text is None:
        return event
    return event.replace(text, text + STAMP_PREFIX.encode() + found.group(1) + b" ", 1)


class StampedMock:
    """WSGI: `/<pacing>/v1/...` to a MockUpstream with that pacing's defaults; stream events stamped."""

    def __init__(self, paced_chunks: int, paced_delay: float, events_chunks: int = 400, events_delay: float = 0.0025):
        self.mocks = {
            "short": MockUpstream(Options(chunks=2, delay=0.0)),
            "paced": MockUpstream(Options(chunks=paced_chunks, delay=paced_delay)),
            "events": MockUpstream(Options(chunks=events_chunks, delay=events_delay)),
        }

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        pacing, _, rest = environ["PATH_INFO"].partition("/")[2].partition("/")
        mock = self.mocks.get(pacing)
        if mock is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"use /short/v1/..., /paced/v1/... or /events/v1/...\n"]
        environ["PATH_INFO"] = "/" + rest
        return _stamped(mock(environ, start_response))


def _stamped(body: Iterable[bytes]) -> Iterator[bytes]:
    try:
        for piece in body:
            yield stamp(piece)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()  # the mock counts a stream the gateway left as aborted in its own `finally`


class _Handler(WSGIHandler):
    def __init__(self, sock, address, server, rfile=None):  # type: ignore[no-untyped-def]
        # As the mock's own handler: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(sock, address, server, rfile)

    def get_environ(self) -> dict:
        environ = super().get_environ()
        environ["mock.socket"] = self.socket  # the mock's drop_after cuts the connection through it
        return environ


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stamped_mock", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--paced-chunks", type=int, default=20)
    parser.add_argument("--paced-delay", type=float, default=0.02)
    parser.add_argument("--events-chunks", type=int, default=400)
    parser.add_argument("--events-delay", type=float, default=0.0025)
    args = parser.parse_args(argv)
    app = StampedMock(args.paced_chunks, args.paced_delay, args.events_chunks, args.events_delay)
    server = WSGIServer(("127.0.0.1", args.port), app, handler_class=_Handler, log=None)
    print(f"stamped mock listening on http://127.0.0.1:{args.port}/{{short,paced,events}}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
