"""The rest of the OpenAI surface in the bundled mock upstream: images, audio, moderations and rerank.

Every answer is deterministic, derived from the request, in the shapes the openai SDK parses:
- `POST /v1/images/generations` (JSON), `/v1/images/edits` and `/v1/images/variations` (multipart, an
  `image` or `image[]` file required): `n` small PNGs as `b64_json` (or `url` with response_format "url");
  `gpt-image*` models always answer b64_json and report token `usage`.
- `POST /v1/audio/speech` (JSON): `speech_bytes(body)`, sent in `chunks` pieces `delay` apart (chunked
  transfer encoding), so a test can see a gateway pass them through as they arrive.
- `POST /v1/audio/transcriptions` and `/v1/audio/translations` (multipart, a `file` required): "mock
  transcript of N bytes from NAME" as json, text or verbose_json; a transcription with `stream=true` is
  data-only SSE, one `transcript.text.delta` per word and a `transcript.text.done` with usage.
- `POST /v1/moderations` (JSON): an input with a word from FLAGGED is flagged for violence.
- `POST /v1/rerank` (JSON, the vLLM/Jina/Cohere form): relevance = the share of the query's words a
  document contains, best first.
A multipart body reaches the handlers (and `/_mock/stats`) as `form_summary`: its text fields and the
size of each file, never the bytes; a form field `mock` holding a JSON object overrides Options as the
JSON bodies' `"mock"` does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import gevent

from app.dialects.multipart import parts
from app.errors import ApiError

IMAGE_PATHS = ("/v1/images/generations", "/v1/images/edits", "/v1/images/variations")
AUDIO_PATHS = ("/v1/audio/speech", "/v1/audio/transcriptions", "/v1/audio/translations")
PATHS = frozenset((*IMAGE_PATHS, *AUDIO_PATHS, "/v1/moderations", "/v1/rerank"))
FORM_PATHS = frozenset(("/v1/images/edits", "/v1/images/variations", *AUDIO_PATHS[1:]))
AUDIO_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
               "wav": "audio/wav", "pcm": "audio/pcm"}  # fmt: skip
AUDIO_MAGIC = {"mp3": b"ID3", "opus": b"OggS", "aac": b"\xff\xf1", "flac": b"fLaC", "wav": b"RIFF", "pcm": b""}
FLAGGED = ("kill", "murder", "bomb")
CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
              "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
              "violence/graphic")  # fmt: skip


class MediaMock:
    """The media routes; the chat mock's helpers are handed in, so the import goes one way."""

    def __init__(self, *, send: Callable, json_reply: Callable, error_body: Callable, cookie: tuple[str, str]) -> None:
        self.send, self.json_reply, self.error_body, self.cookie = send, json_reply, error_body, cookie
        self.handlers: dict[str, Callable] = {
            "/v1/images/generations": self._image, "/v1/images/edits": self._image,
            "/v1/images/variations": self._image, "/v1/audio/speech": self._speech,
            "/v1/audio/transcriptions": self._transcribe, "/v1/audio/translations": self._transcribe,
            "/v1/moderations": self._moderate, "/v1/rerank": self._rerank,
        }  # fmt: skip

    def __call__(self, environ: dict, start_response: Callable, body: Any, opts: Any, stats: Any) -> Iterator[bytes]:
        path = environ["PATH_INFO"]
        if environ["REQUEST_METHOD"] != "POST":
            return self._fail(start_response, 405, "Use POST.", "method_not_allowed", None)
        problem = _invalid(path, body)
        if problem is not None:
            return self._fail(start_response, 400, *problem)
        gevent.sleep(opts.header_delay + (0 if _streams(path, body) else opts.first_delay))
        try:
            return self.handlers[path](environ, start_response, body, opts, stats)
        except ApiError as error:  # a field with a bad value
            return self._fail(start_response, error.status, error.message, error.code or "invalid_value", error.param)

    def _image(self, environ: dict, start_response: Callable, body: dict, opts: Any, stats: Any) -> list[bytes]:
        fields = body.get("form", body)
        model = fields.get("model") or "dall-e-2"
        count = _int(fields.get("n", 1), "n", 1, 10)
        sizes = [f["size"] for f in body.get("files", [])]
        seed = json.dumps([environ["PATH_INFO"], model, fields.get("prompt"), sizes])
        gpt_image = model.startswith("gpt-image")
        as_url = fields.get("response_format") == "url" and not gpt_image
        reply: dict = {"created": int(time.time()), "data": [_image(seed, i, as_url) for i in range(count)]}
        if gpt_image:
            text_tokens = max(1, len(str(fields.get("prompt") or "")) // 4)
            image_tokens = sum(f["size"] for f in body.get("files", [])) // 1000
            usage = {"input_tokens": text_tokens + image_tokens, "output_tokens": 272 * count,
                     "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens}}  # fmt: skip
            reply["usage"] = {**usage, "total_tokens": usage["input_tokens"] + usage["output_tokens"]}
            stats.usage_total += reply["usage"]["total_tokens"]
        return self.json_reply(start_response, 200, reply)

    def _speech(self, environ: dict, start_response: Callable, body: dict, opts: Any, stats: Any) -> Iterator[bytes]:
        audio = speech_bytes(body)
        size = -(-len(audio) // max(1, opts.chunks))
        pieces = [audio[i : i + size] for i in range(0, len(audio), size)]
        if body.get("stream_format") == "sse":  # speech.audio.delta events (base64), then speech.audio.done
            start_response("200 OK", [("Content-Type", "text/event-stream; charset=utf-8"), self.cookie])
            return self._paced(environ, _speech_events(pieces, body), opts, stats, first_delay=opts.first_delay)
        kind = AUDIO_TYPES[body.get("response_format") or "mp3"]
        start_response("200 OK", [("Content-Type", kind), self.cookie])  # no length: chunked encoding
        return self._paced(environ, pieces, opts, stats, first_delay=opts.first_delay)

    def _transcribe(self, environ: dict, start_response: Callable, body: dict, opts: Any, stats: Any) -> Any:
        fields, upload = body["form"], _upload(environ["PATH_INFO"], body)
        translate = environ["PATH_INFO"].endswith("translations")
        text = transcript_text(upload["size"], upload["filename"], translate)
        words = [w + " " for w in text.split(" ")[:-1]] + [text.split(" ")[-1]]
        usage = {"type": "tokens", "input_tokens": max(1, upload["size"] // 1000), "output_tokens": len(words)}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        if body.get("stream") and not translate:  # translations have no stream: the flag is ignored
            stats.usage_total += usage["total_tokens"]
            start_response("200 OK", [("Content-Type", "text/event-stream; charset=utf-8"),
                                      ("Cache-Control", "no-cache"), self.cookie])  # fmt: skip
            return self._paced(environ, _transcript_events(words, usage), opts, stats, first_delay=opts.first_delay)
        answer = _transcript(fields.get("response_format") or "json", text, upload["size"], translate)
        if not translate:
            stats.usage_total += usage["total_tokens"]
        if isinstance(answer, str):
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"), self.cookie])
            return [answer.encode()]
        return self.json_reply(start_response, 200, answer if translate else {"usage": usage, **answer})

    def _moderate(self, environ: dict, start_response: Callable, body: dict, opts: Any, stats: Any) -> list[bytes]:
        texts = _moderation_texts(body.get("input"))
        model = body.get("model") or "omni-moderation-latest"
        results = [_moderation(text) for text in texts]
        reply = {"id": f"modr-{_digest(json.dumps(texts), 0)}", "model": model, "results": results}
        return self.json_reply(start_response, 200, reply)

    def _rerank(self, environ: dict, start_response: Callable, body: dict, opts: Any, stats: Any) -> list[bytes]:
        query, documents = body.get("query"), body.get("documents")
        if not isinstance(query, str) or not isinstance(documents, list):
            raise ApiError(400, "rerank needs a query string and a documents list.", code="invalid_value")
        texts = [_document_text(d, i) for i, d in enumerate(documents)]
        top_n = _int(body.get("top_n", len(texts)), "top_n", 0, 10_000)
        ranked = sorted(range(len(texts)), key=lambda i: (-overlap(query, texts[i]), i))[:top_n]
        keep = body.get("return_documents") is not False
        results = [{"index": i, "relevance_score": overlap(query, texts[i]),
                    **({"document": {"text": texts[i]}} if keep else {})} for i in ranked]  # fmt: skip
        usage = {"total_tokens": sum(len(t.split()) for t in (query, *texts))}
        stats.usage_total += usage["total_tokens"]
        reply = {"id": f"rerank-{_digest(json.dumps([query, texts]), 0)}", "model": body["model"],
                 "results": results, "usage": usage}  # fmt: skip
        return self.json_reply(start_response, 200, reply)

    def _paced(self, environ: dict, pieces: Any, opts: Any, stats: Any, first_delay: float) -> Iterator[bytes]:
        """Send `pieces` `delay` apart, counted as a stream; `drop_after` cuts the connection after N pieces."""
        stats.streams_started += 1
        finished = False
        try:
            gevent.sleep(first_delay)
            for seq, piece in enumerate(pieces):
                if opts.drop_after is not None and seq >= opts.drop_after:
                    stats.streams_dropped += 1
                    finished = True
                    environ["mock.socket"].shutdown(socket.SHUT_RDWR)  # no terminating chunk
                    return
                if seq and opts.delay:
                    gevent.sleep(opts.delay)
                yield from self.send(piece, opts.trickle)
            finished = True
            stats.streams_completed += 1
        finally:
            if not finished:
                stats.streams_aborted += 1

    def _fail(self, start_response: Callable, status: int, message: str, code: str, param: str | None) -> list[bytes]:
        error = self.error_body(message, code)
        error["error"]["param"] = param
        return self.json_reply(start_response, status, error)


def form_summary(environ: dict, raw: bytes) -> dict | None:
    """A multipart body as the mock records and reads it: text fields, file sizes (no bytes), stream and mock."""
    content_type = environ.get("CONTENT_TYPE", "")
    if not content_type.lower().startswith("multipart/"):
        return None
    try:
        found = parts(raw, content_type)
    except ApiError as error:
        return {"form_error": error.message}
    form: dict[str, Any] = {}
    for part in (p for p in found if p.filename is None):
        value = (part.value or b"").decode("utf-8", "replace")
        form[part.name] = [*_listed(form[part.name]), value] if part.name in form else value
    files = [{"name": p.name, "filename": p.filename, "content_type": p.content_type, "size": p.size}
             for p in found if p.filename is not None]  # fmt: skip
    summary: dict[str, Any] = {"form": form, "files": files, "stream": form.get("stream") == "true"}
    try:
        mock = json.loads(form.get("mock", "null"))
    except (TypeError, ValueError):
        mock = None
    if isinstance(mock, dict):
        summary["mock"] = mock
    return summary


def transcript_text(size: int, filename: str, translate: bool) -> str:
    """What the mock hears in an upload: only its size and name."""
    return f"mock {'translation' if translate else 'transcript'} of {size} bytes from {filename}"


def speech_bytes(body: dict) -> bytes:
    """The mock's audio for a speech request: a format's magic bytes, then hashes of the request, ~input-sized."""
    fmt = body.get("response_format") or "mp3"
    seed = json.dumps([body.get("model"), body.get("input"), body.get("voice"), fmt, body.get("speed")])
    blocks = max(4, len(str(body.get("input", ""))) // 8)
    return AUDIO_MAGIC[fmt] + b"".join(hashlib.sha256(f"{seed}{i}".encode()).digest() for i in range(blocks))


def png_bytes(seed: str) -> bytes:
    """A valid 4x4 RGB PNG whose pixels come from `seed`'s hash."""
    digest = hashlib.sha256(seed.encode()).digest()
    rows = b"".join(b"\x00" + (digest * 2)[y * 12 : y * 12 + 12] for y in range(4))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def overlap(query: str, document: str) -> float:
    """The share of the query's distinct words that the document contains (case-insensitive)."""
    wanted = set(query.lower().split())
    return round(len(wanted & set(document.lower().split())) / len(wanted), 6) if wanted else 0.0


def _invalid(path: str, body: Any) -> tuple[str, str, str | None] | None:
    """A problem with the request's shape as (message, code, param), or None."""
    if path in FORM_PATHS:
        if not isinstance(body, dict) or "form" not in body and "form_error" not in body:
            return "Send this request as multipart/form-data.", "invalid_content_type", None
        if "form_error" in body:
            return body["form_error"], "invalid_multipart", None
        if _upload(path, body) is None:
            want = "image" if "/images/" in path else "file"
            return f"The form has no '{want}' file.", "missing_required_parameter", want
        if "/audio/" in path and not body["form"].get("model"):
            return "The form has no 'model' field.", "missing_required_parameter", "model"
        return None
    if not isinstance(body, dict) or not isinstance(body.get("model", ""), str):
        return "Body must be a JSON object (model a string).", "invalid_body", None
    required = {"/v1/images/generations": "prompt", "/v1/audio/speech": "input", "/v1/moderations": "input"}
    name = required.get(path, "model")
    if body.get(name) is None:
        return f"Missing required parameter: '{name}'.", "missing_required_parameter", name
    if path == "/v1/audio/speech" and (body.get("response_format") or "mp3") not in AUDIO_TYPES:
        return f"response_format must be one of {', '.join(AUDIO_TYPES)}.", "invalid_value", "response_format"
    return None


def _image(seed: str, index: int, as_url: bool) -> dict:
    if as_url:
        return {"url": f"https://images.mock.invalid/{_digest(seed, index)}.png"}
    return {"b64_json": base64.b64encode(png_bytes(f"{seed}{index}")).decode()}


def _upload(path: str, body: dict) -> dict | None:
    """The first `image` (or `image[]`) file of an images form, the `file` of an audio one."""
    want = "image" if "/images/" in path else "file"
    return next((f for f in body["files"] if f["name"] in (want, f"{want}[]")), None)


def _streams(path: str, body: dict) -> bool:
    return path == "/v1/audio/speech" or (path == "/v1/audio/transcriptions" and bool(body.get("stream")))


def _speech_events(pieces: list[bytes], body: dict) -> list[bytes]:
    """A speech stream as OpenAI sends it with stream_format "sse": base64 audio deltas, then the usage."""
    events = [{"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()} for piece in pieces]
    tokens = max(1, len(str(body.get("input") or "")) // 4)
    usage = {"input_tokens": tokens, "output_tokens": len(pieces), "total_tokens": tokens + len(pieces)}
    events.append({"type": "speech.audio.done", "usage": usage})
    return [b"data: " + json.dumps(event).encode() + b"\n\n" for event in events]


def _transcript_events(words: list[str], usage: dict) -> Iterator[bytes]:
    for seq, word in enumerate(words):
        event = {"type": "transcript.text.delta", "delta": word, "mock_seq": seq, "mock_ts": time.time()}
        yield b"data: " + json.dumps(event).encode() + b"\n\n"
    done = {"type": "transcript.text.done", "text": "".join(words), "usage": usage, "mock_seq": len(words)}
    yield b"data: " + json.dumps(done).encode() + b"\n\n"


def _transcript(fmt: str, text: str, size: int, translate: bool) -> dict | str:
    if fmt == "text":
        return text
    if fmt == "json":
        return {"text": text}
    if fmt != "verbose_json":
        raise ApiError(400, "response_format must be json, text or verbose_json.", param="response_format")
    duration = round(size / 32000, 3)  # 16 kHz, 16-bit mono
    segment = {"id": 0, "seek": 0, "start": 0.0, "end": duration, "text": text, "tokens": [1, 2, 3],
               "temperature": 0.0, "avg_logprob": -0.1, "compression_ratio": 1.0, "no_speech_prob": 0.0}  # fmt: skip
    answer = {"task": "translate" if translate else "transcribe", "language": "english", "duration": duration,
              "text": text, "segments": [segment]}  # fmt: skip
    return answer if translate else {**answer, "usage": {"type": "duration", "seconds": duration}}


def _moderation_texts(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, str | dict) for item in items):
        raise ApiError(400, "input must be a string, a list of strings or of input parts.", param="input")
    # An image part is moderated as no text (never flagged).
    return [item if isinstance(item, str) else str(item.get("text") or "") for item in items]


def _moderation(text: str) -> dict:
    flagged = any(word in text.lower() for word in FLAGGED)
    scores = {c: 0.0001 for c in CATEGORIES}
    if flagged:
        scores["violence"] = 0.97
    categories = {c: scores[c] > 0.5 for c in CATEGORIES}
    applied = {c: ["text"] for c in CATEGORIES}
    return {"flagged": flagged, "categories": categories, "category_scores": scores,
            "category_applied_input_types": applied}  # fmt: skip


def _document_text(document: Any, index: int) -> str:
    text = document.get("text") if isinstance(document, dict) else document
    if not isinstance(text, str):
        raise ApiError(400, f"documents[{index}] must be a string or an object with text.", param="documents")
    return text


def _int(value: Any, name: str, low: int, high: int) -> int:
    number = int(value) if isinstance(value, str) and value.isdigit() else value
    if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
        raise ApiError(400, f"{name} must be an integer from {low} to {high}.", param=name)
    return number


def _listed(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _digest(seed: str, index: int) -> str:
    return hashlib.sha256(f"{seed}/{index}".encode()).hexdigest()[:24]
