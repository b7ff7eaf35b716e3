"""The bundled OpenAI-compatible fake upstream, used by `make run`, the tests and bench/.

    python -m app.mock_upstream --port 9100 [--port-file PATH] [--chunks 8] [--delay 0.05] [--strict-edge]
                                [--model-options '{"mock-slow": {"first_delay": 0.4}}']

Behaviour per token prefix: `revoked-` -> 403, `expired-` -> 401, `limited-` -> 429
with `Retry-After: <seconds>`, `limiteddate-` -> 429 with an HTTP-date Retry-After,
`broken-` -> 500 HTML page. A request body may carry `"mock": {...}` to override the
flags for that request (`chunks`, `delay`, `drop_after`, `status`). Every stream chunk
carries `mock_seq` and `mock_ts` (the time it was produced) so tests can measure
forwarding. `GET /_mock/stats` reports what the mock saw (`models`: requests per requested model id, every
dialect); `POST /_mock/reset` clears it.

Per-model options: `POST /_mock/models` with `{"<model id>": {<Options field>: value}}` replaces the overrides
(`{}` clears them; `/_mock/reset` keeps them), `GET /_mock/models` returns them, `--model-options JSON` sets
them at start. An unknown option or a value of the wrong type is a 400 (OpenAI's error shape). A request naming
the model gets them over the process flags; its body's `"mock"` and the token-prefix faults still win.
Two options (per model, or per request in `"mock"`): `context_window: N` answers a 400 `context_length_exceeded`
(Anthropic: "prompt is too long") when the prompt tokens the mock would report exceed N; `refuse: true` a 400
`content_policy_violation` (Anthropic: "Output blocked by content filtering policy"); both on chat, completions,
Responses and Messages, streamed or not, before any event (app/mock_models.py). Every answer names the model the
request named, exactly.
Continuable replies (a final assistant message that is a prefix of the reply gets the rest), `error_after`,
`cut_mid_event`, `cut_mid_char`, `multibyte` and the token prefixes `cut3-`, `slowfirst800-`...: app/mock_resume.py.
The Responses API (`/v1/responses` and its stored-response routes) is app/mock_responses.py; images,
audio, moderations and rerank (multipart bodies recorded as their fields and file sizes) app/mock_media.py;
the Anthropic Messages API (`/v1/messages`, count_tokens, the models list asked with x-api-key) app/mock_messages.py.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from pathlib import Path
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.pywsgi import WSGIHandler, WSGIServer

from app.mock_chat import chunks, completion, embeddings, prompt_tokens, reply_words
from app.mock_media import PATHS as MEDIA_PATHS
from app.mock_media import MediaMock, form_summary
from app.mock_messages import MessagesMock, is_messages_request
from app.mock_models import parse_overrides, policy_error, requested_model
from app.mock_responses import PATH as RESPONSES_PATH
from app.mock_responses import ResponsesMock
from app.mock_resume import continue_conflict, emit, token_faults

MODELS = ("mock-gpt", "mock-gpt-mini", "mock-embed")
STRICT_EDGE_PAGE = b"<!DOCTYPE html><html><head><title>403 Forbidden</title></head><body><h1>Access denied</h1><p>Request blocked by edge.</p></body></html>"  # noqa: E501
NAIVE_AGENTS = ("python-requests/", "python-urllib3/", "python-urllib/")


@dataclass(frozen=True)
class Options:
    chunks: int = 8
    delay: float = 0.05
    drop_after: int | None = None  # close the connection after N chunks
    status: int | None = None  # answer every request with this status
    strict_edge: bool = False
    retry_after: int = 7
    header_delay: float = 0.0  # stall before the status line and headers
    first_delay: float = 0.0  # headers (and a comment) at once, then stall before the first event
    stall_after: int | None = None  # after N chunks, stall for `stall` seconds
    stall: float = 0.0
    trickle: bool = False  # send every event a few bytes at a time
    noise: bool = False  # non-data lines (garbage, comments) between the events
    garbage: bool = False  # only garbage lines: no data event at all
    error_first: bool = False  # the first event is an error event
    empty: bool = False  # headers, then the stream ends without any event
    context_window: int | None = None  # a longer prompt (in the mock's prompt tokens) is a 400
    refuse: bool = False  # a content-policy refusal (400)
    error_after: int | None = None  # event N is an error event (the dialect's shape) that ends the stream
    cut_mid_event: int | None = None  # send the first half of event N's bytes, then close the connection
    cut_mid_char: int | None = None  # close the connection inside event N's first multi-byte character
    multibyte: bool = False  # reply words with multi-byte UTF-8 characters, sent unescaped


# Token prefixes that switch a fault on for every request made with that token.
TOKEN_FAULTS = {
    "stallhead-": {"header_delay": 30.0},
    "slow-": {"first_delay": 30.0},
    "errorfirst-": {"error_first": True},
    "empty-": {"empty": True},
    "garbage-": {"garbage": True},
}


@dataclass
class Stats:
    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_aborted: int = 0  # the client (the gateway) went away mid-stream
    streams_dropped: int = 0  # dropped on purpose (drop_after)
    usage_total: int = 0  # total_tokens of every usage object the mock sent
    models: dict[str, int] = field(default_factory=dict)  # requests per requested model id
    recent: list[dict] = field(default_factory=list)

    def record(self, environ: dict, body: dict | None) -> None:
        self.requests += 1
        model = requested_model(body)
        if model is not None:
            self.models[model] = self.models.get(model, 0) + 1
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        self.recent.append({"path": environ["PATH_INFO"], "query": environ.get("QUERY_STRING", ""),
                            "headers": headers, "body": body})  # fmt: skip
        del self.recent[:-50]


class MockUpstream:
    """A small WSGI app; one instance per process."""

    def __init__(self, options: Options, model_options: dict[str, dict] | None = None) -> None:
        self.options = options
        self.model_options = parse_overrides(model_options or {}, Options.__dataclass_fields__)
        self.stats = Stats()
        self.responses = ResponsesMock(
            reply_words=reply_words, send=_send, json_reply=_json, error_body=_error_body, cookie=EDGE_COOKIE
        )
        self.media = MediaMock(send=_send, json_reply=_json, error_body=_error_body, cookie=EDGE_COOKIE)
        self.messages = MessagesMock(reply_words=reply_words, send=_send, cookie=EDGE_COOKIE,
                                     token_faults=TOKEN_FAULTS, edge_page=STRICT_EDGE_PAGE,
                                     naive_agents=NAIVE_AGENTS)  # fmt: skip

    def __call__(self, environ: dict, start_response: Callable) -> Iterator[bytes]:
        path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
        if path == "/_mock/stats":
            return _json(start_response, 200, _stats_view(self.stats))
        if path == "/_mock/reset" and method == "POST":
            self.stats = Stats()
            return _json(start_response, 200, {"reset": True})
        body = _read_json(environ)
        if path == "/_mock/models":
            return self._models(start_response, method, body)
        if body is None:  # a multipart upload: its fields and file sizes, never the bytes
            body = form_summary(environ, environ.pop("mock.raw_body"))
        self.stats.record(environ, body)
        opts = replace(self.options, **self.model_options.get(requested_model(body) or "", {}))
        if isinstance(body, dict) and isinstance(body.get("mock"), dict):
            known = {k: v for k, v in body["mock"].items() if k in Options.__dataclass_fields__}
            opts = replace(opts, **known)
        if is_messages_request(path, environ):  # the Anthropic API: its own key header, faults and error shape
            return self.messages(environ, start_response, body, opts, self.stats)
        token = environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ")
        opts = replace(opts, **token_faults(token, TOKEN_FAULTS))
        streaming = bool(isinstance(body, dict) and body.get("stream"))
        refusal = self._refuse(environ, opts, streaming)
        if refusal is not None:
            status, headers, payload = refusal
            start_response(status, headers)
            return [payload]
        return self._route(environ, start_response, path, method, body, opts, streaming)

    def _models(self, start_response: Callable, method: str, body: Any) -> list[bytes]:
        """GET: the per-model overrides; POST: replace them (checked first: a 400 leaves them unchanged)."""
        if method == "POST":
            try:
                self.model_options = parse_overrides(body, Options.__dataclass_fields__)
            except ValueError as exc:
                return _json(start_response, 400, _error_body(str(exc), "invalid_mock_options"))
        elif method != "GET":
            return _json(start_response, 405, _error_body("Use GET or POST.", "method_not_allowed"))
        return _json(start_response, 200, self.model_options)

    def _refuse(self, environ: dict, opts: Options, streaming: bool) -> tuple[str, list, bytes] | None:
        agent = environ.get("HTTP_USER_AGENT", "")
        accept = environ.get("HTTP_ACCEPT", "")
        if (
            opts.strict_edge
            and streaming
            and (not agent or agent.startswith(NAIVE_AGENTS) or "text/event-stream" not in accept)
        ):
            return "403 Forbidden", [("Content-Type", "text/html")], STRICT_EDGE_PAGE
        token = environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ")
        if not token:
            return _error(401, "Missing bearer token.", "invalid_api_key")
        if token.startswith("revoked-"):
            return _error(403, "This token has been revoked.", "token_revoked")
        if token.startswith("expired-"):
            return _error(401, "This token has expired.", "invalid_api_key")
        if token.startswith("limited-"):
            return _error(429, "Rate limit reached.", "rate_limit_exceeded", [("Retry-After", str(opts.retry_after))])
        if token.startswith("limiteddate-"):
            when = formatdate(time.time() + opts.retry_after, usegmt=True)
            return _error(429, "Rate limit reached.", "rate_limit_exceeded", [("Retry-After", when)])
        if token.startswith("broken-") or opts.status == 500:
            return "500 Internal Server Error", [("Content-Type", "text/html")], b"<html><body>500</body></html>"
        if opts.status is not None:
            return _error(opts.status, f"Mock status {opts.status}.", "mock_status")
        return None

    def _route(self, environ, start_response, path, method, body, opts: Options, streaming: bool):
        if path == "/v1/models" and method == "GET":
            data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "mock"} for m in MODELS]
            return _json(start_response, 200, {"object": "list", "data": data})
        if path == RESPONSES_PATH or path.startswith(RESPONSES_PATH + "/"):
            return self.responses(environ, start_response, body, opts, self.stats)
        if path in MEDIA_PATHS:
            return self.media(environ, start_response, body, opts, self.stats)
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            return _json(start_response, 404, _error_body(f"Unknown path {path}", "unknown_url"))
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _json(start_response, 400, _error_body("Body must be a JSON object with a model.", "invalid_body"))
        if path == "/v1/embeddings":
            reply = embeddings(body)
            self.stats.usage_total += reply["usage"]["total_tokens"]
            return _json(start_response, 200, reply)
        refused = policy_error(opts, prompt_tokens(body))  # context_window, refuse: before any event
        conflict = continue_conflict(body)
        if refused is None and conflict is not None:
            refused = _error_body(conflict, "invalid_request")
        if refused is not None:
            return _json(start_response, 400, refused)
        chat = path == "/v1/chat/completions"
        if not streaming:
            gevent.sleep(opts.header_delay + opts.first_delay)
            reply = completion(body, chat, opts)
            self.stats.usage_total += reply["usage"]["total_tokens"]
            return _json(start_response, 200, reply)
        start_response(
            "200 OK", [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache"), EDGE_COOKIE]
        )
        return self._stream(environ, body, chat, opts)

    def _stream(self, environ: dict, body: dict, chat: bool, opts: Options) -> Iterator[bytes]:
        self.stats.streams_started += 1
        finished = False
        try:
            gevent.sleep(opts.header_delay)  # nothing is sent before the first yield
            if opts.first_delay:
                yield b": mock upstream thinking\n\n"
                gevent.sleep(opts.first_delay)
            if opts.empty or opts.garbage:
                if opts.garbage:
                    yield b"this is not server-sent events\n\n<html>oops</html>\n\n"
                finished = True
                self.stats.streams_completed += 1
                return
            if opts.error_first:  # an error event first (the reply still follows, as before)
                error = _error_body("The model is overloaded.", "server_overloaded")
                yield b"data: " + json.dumps(error).encode() + b"\n\n"
            if (yield from self._chunks(environ, body, chat, opts)):
                self.stats.streams_dropped += 1
                finished = True
                return
            finished = True
            self.stats.streams_completed += 1
        finally:
            if not finished:
                self.stats.streams_aborted += 1

    def _chunks(self, environ: dict, body: dict, chat: bool, opts: Options) -> Generator[bytes, None, bool]:
        """The chunks as events, then `[DONE]`; an error event at `error_after` ends them. Returns whether the
        connection was cut on purpose (drop_after, cut_mid_event, cut_mid_char)."""
        for seq, chunk in enumerate(chunks(body, chat, opts)):
            if opts.drop_after is not None and seq >= opts.drop_after:
                environ["mock.socket"].shutdown(socket.SHUT_RDWR)  # no terminating chunk
                return True
            if seq and opts.delay:
                gevent.sleep(opts.delay)
            if opts.stall_after is not None and seq == opts.stall_after:
                gevent.sleep(opts.stall)
            if opts.error_after is not None and seq == opts.error_after:  # the stream ends after it: no [DONE]
                error = _error_body("The model is overloaded.", "server_overloaded")
                yield b"data: " + json.dumps(error).encode() + b"\n\n"
                return False
            chunk["mock_seq"], chunk["mock_ts"] = seq, time.time()
            if chunk.get("usage"):
                self.stats.usage_total += chunk["usage"]["total_tokens"]
            if opts.noise:
                yield b": comment\nnot-a-field\n\n"
            data = b"data: " + json.dumps(chunk, ensure_ascii=not opts.multibyte).encode() + b"\n\n"
            if (yield from emit(_send, data, seq, opts, environ)):
                return True
        yield b"data: [DONE]\n\n"
        return False


def _send(event: bytes, trickle: bool) -> Iterator[bytes]:
    if not trickle:
        yield event
        return
    for i in range(0, len(event), 7):  # a few bytes per write, each its own chunk on the wire
        yield event[i : i + 7]
        gevent.sleep(0.002)


def _read_json(environ: dict) -> Any:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else environ["wsgi.input"].read()
    environ["mock.raw_body"] = raw  # for form_summary
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _error_body(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def _error(status: int, message: str, code: str, extra: list | None = None) -> tuple[str, list, bytes]:
    headers = [("Content-Type", "application/json"), *(extra or [])]
    return f"{status} Mock", headers, json.dumps(_error_body(message, code)).encode()


EDGE_COOKIE = ("Set-Cookie", "mock-edge=edge-session-0123456789; Path=/; HttpOnly")  # must never reach clients


def _json(start_response: Callable, status: int, payload: dict) -> list[bytes]:
    start_response(f"{status} Mock", [("Content-Type", "application/json"), EDGE_COOKIE])
    return [json.dumps(payload).encode()]


def _stats_view(stats: Stats) -> dict:
    return {k: v for k, v in stats.__dict__.items()}


class _Handler(WSGIHandler):
    def __init__(self, sock, address, server, rfile=None):  # type: ignore[no-untyped-def]
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
        # and the client's delayed ACK add ~40 ms to every keep-alive response.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(sock, address, server, rfile)

    def get_environ(self) -> dict:
        environ = super().get_environ()
        environ["mock.socket"] = self.socket  # lets drop_after cut the connection
        return environ


def _listen(host: str, port: int) -> gsocket.socket:
    """A listening gevent socket, closed again when it cannot bind (gevent's own would be leaked)."""
    sock = gsocket.socket(gsocket.AF_INET6 if ":" in host else gsocket.AF_INET)
    try:
        sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(WSGIServer.backlog)
    except OSError:
        sock.close()
        raise
    return sock


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535):  # else bind() raises
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return int(text)


def _model_options(text: str) -> dict[str, dict]:
    try:
        return parse_overrides(json.loads(text), Options.__dataclass_fields__)
    except ValueError as exc:  # json.JSONDecodeError is one
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.mock_upstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=9100, help="0: any free port (see --port-file)")
    parser.add_argument("--port-file", help="write the port once listening (`make run` picks a free one this way)")
    parser.add_argument("--chunks", type=int, default=8, help="content chunks per reply (default 8)")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds between stream chunks (default 0.05)")
    parser.add_argument("--drop-after", type=int, default=None, help="cut every stream after N chunks")
    parser.add_argument("--status", type=int, default=None, help="answer every request with this HTTP status")
    parser.add_argument(
        "--strict-edge",
        action="store_true",
        help="403 HTML page to streaming requests without a real User-Agent and Accept: text/event-stream",
    )
    parser.add_argument("--model-options", type=_model_options, default={},
                        help='per-model options as JSON, e.g. \'{"mock-slow": {"first_delay": 0.4}}\'')  # fmt: skip
    args = parser.parse_args(argv)
    options = Options(args.chunks, args.delay, args.drop_after, args.status, args.strict_edge)
    try:
        listener = _listen(args.host, args.port)
    except OSError as exc:  # e.g. the port is taken by another `make run`: one line, not a traceback
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        parser.exit(1, f"mock upstream: cannot listen on {args.host}:{args.port}: {reason}\n")
    server = WSGIServer(listener, MockUpstream(options, args.model_options), handler_class=_Handler, log=None)
    if args.port_file:  # written whole, then renamed: a reader never sees half a number
        Path(f"{args.port_file}.tmp").write_text(f"{server.server_port}\n")
        Path(f"{args.port_file}.tmp").replace(args.port_file)
    print(f"mock upstream listening on http://{args.host}:{server.server_port}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
