"""The rest of the OpenAI surface, passed through: images, audio, moderations and rerank.

Every body goes upstream unchanged (a multipart upload byte for byte, with the client's
boundary). What differs per endpoint is data: the fields checked, the file an upload must
carry, whether and how the answer streams, and which event ends a stream:
- typed events (`data: {"type": "transcript.text.delta", ...}`) pass through byte for byte
  and must end with the endpoint's terminal event (e.g. `transcript.text.done`); a stream
  cut short gets an error event the openai SDK raises (`{"type": "error", "error": {...}}`);
- speech audio is raw bytes relayed as they arrive (`sse = False`): a broken body cannot
  say why, so the connection is cut. `stream_format: "sse"` asks for speech events instead.
Usage: `usage.input_tokens` / `output_tokens` (gpt-image, transcriptions, speech events) are
counted as prompt / completion tokens; `usage.total_tokens` alone (rerank) as a total.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from app.dialects import fields
from app.dialects.base import ClientRequest, Leg, Relay, Usage, Verdict
from app.dialects.multipart import form
from app.dialects.openai_chat import OpenAIDialect, chat_usage
from app.errors import StreamBroken, error_body
from app.services import sse

if TYPE_CHECKING:
    from app.config import UpstreamConfig

Types = Mapping[str, tuple[type, ...]]
NUMBER = (int, float)
# A multipart form's text fields that are read (and checked) for routing and validation.
FORM_FIELDS = frozenset({"model", "stream", "prompt", "n", "temperature"})
FORM_INTEGERS = ("n",)
FORM_NUMBERS = ("temperature",)
TOKEN_NAMES = (
    ("input_tokens", "prompt_tokens"),
    ("output_tokens", "completion_tokens"),
    ("total_tokens", "total_tokens"),
)


class MediaDialect(OpenAIDialect):
    """One pass-through endpoint: its fields, its upload's file, and the event that ends its stream."""

    def __init__(
        self,
        name: str,
        path: str,
        *,
        required: Types,
        optional: Types | None = None,
        multipart: bool = False,
        upload: str | None = None,
        terminal: str | None = None,
    ) -> None:
        self.name, self.path, self.required, self.optional = name, path, required, optional or {}
        self.multipart, self.upload, self.terminal = multipart, upload, terminal
        self.can_stream = terminal is not None  # a stream needs an event that says it is complete

    def parse(self, body: bytes, content_type: str | None) -> ClientRequest:
        """A JSON body as any dialect's; a form's text fields (strings, `stream` a boolean) and its file."""
        if not self.multipart:
            return super().parse(body, content_type)
        content_type = content_type or ""
        text, files = form(body, content_type, wanted=FORM_FIELDS)
        payload: dict[str, Any] = dict(text)
        _form_types(payload)
        self.validate(payload)
        if self.upload is not None:
            _check_upload(files, self.upload)
        return ClientRequest(payload, body, content_type, self.streaming(payload))

    def validate(self, payload: dict[str, Any]) -> None:
        fields.check_model(payload)
        fields.check_required(payload, self.required)
        fields.check_optional(payload, self.optional)
        fields.check_stream(payload, self.can_stream)

    def usage(self, data: Any) -> Usage | None:
        return media_usage(data)

    def verdict(self, raw: bytes) -> Verdict:
        return event_verdict(raw)

    def relay(self, *, hide_usage: bool) -> Relay:
        return EventRelay(self.usage, self.terminal)


class RerankDialect(MediaDialect):
    """POST /rerank: `documents` is a non-empty array of strings or objects (vLLM, Jina, Cohere)."""

    def validate(self, payload: dict[str, Any]) -> None:
        super().validate(payload)
        for index, document in enumerate(payload["documents"]):
            if not isinstance(document, str | dict):
                raise fields.invalid(f"Invalid type for 'documents[{index}]': expected a string or an object.",
                                     "documents")  # fmt: skip


class SpeechDialect(MediaDialect):
    """POST /audio/speech: audio bytes relayed as they arrive, or speech events with `stream_format: "sse"`."""

    sse = False

    def __init__(self, events: MediaDialect, **kwargs: Any) -> None:
        super().__init__("speech", "/audio/speech", **kwargs)
        self.events = events  # the dialect of the SSE variant

    def validate(self, payload: dict[str, Any]) -> None:
        super().validate(payload)
        if payload.get("stream_format") not in (None, "sse", "audio"):
            raise fields.invalid("'stream_format' must be 'sse' or 'audio'.", "stream_format")

    def streaming(self, payload: dict[str, Any]) -> bool:
        return True  # audio (or its events) is passed through as it is made

    def legs(self, request: ClientRequest) -> Callable[[UpstreamConfig], Leg]:
        if request.payload.get("stream_format") == "sse":
            return self.events.legs(request)
        return super().legs(request)

    def verdict(self, raw: bytes) -> Verdict:
        return Verdict.ACCEPT  # any audio byte is content

    def relay(self, *, hide_usage: bool) -> Relay:
        return RawRelay()


class EventRelay:
    """Typed events pass through byte for byte; usage is read from them, and the terminal event is awaited."""

    def __init__(self, usage: Callable[[Any], Usage | None], terminal: str | None) -> None:
        self.read_usage, self.terminal = usage, terminal
        self.marker = terminal.encode() if terminal else None
        self.usage: Usage | None = None
        self.done = False  # its terminal event was seen

    def feed(self, raw: bytes) -> Sequence[bytes]:
        if (self.marker is not None and self.marker in raw) or b'"usage"' in raw:
            self._read(raw)
        return (raw,)

    def _read(self, raw: bytes) -> None:
        event = sse.parse(raw)
        try:
            data = event.json()
        except ValueError:
            return
        if event_type(event, data) == self.terminal:
            self.done = True
        usage = self.read_usage(data)
        if usage is not None:
            self.usage = usage

    def end(self) -> Sequence[bytes]:
        if not self.done and self.terminal is not None:  # no event is known to end it: it ends when it ends
            raise StreamBroken("upstream_stream_error", f"The upstream stream ended without {self.terminal}.")
        return ()

    def fail(self, code: str, message: str) -> Sequence[bytes]:
        return (error_event(code, message),)

    def plain(self, body: bytes, content_type: str) -> bytes:
        if "json" in content_type:
            try:
                self.usage = self.read_usage(json.loads(body))
            except ValueError:
                self.usage = None
        return body


class RawRelay:
    """A raw body (speech audio): each chunk as it arrives; a broken one is cut, as it cannot say why."""

    usage: Usage | None = None
    done = False  # raw bytes have no last event: the body ends when it ends

    def feed(self, raw: bytes) -> Sequence[bytes]:
        return (raw,)

    def end(self) -> Sequence[bytes]:
        return ()

    def fail(self, code: str, message: str) -> Sequence[bytes]:
        return ()

    def plain(self, body: bytes, content_type: str) -> bytes:
        return body


def event_verdict(raw: bytes) -> Verdict:
    """Comments wait; an error event (typed `error`, or chat-style `{"error": ...}`) is retried; else content."""
    if not sse.has_data(raw):
        return Verdict.WAIT
    if b'"error"' in raw:
        event = sse.parse(raw)
        try:
            data = event.json()
        except ValueError:
            return Verdict.ACCEPT
        if is_error(event, data):
            return Verdict.ERROR
    return Verdict.ACCEPT


def is_error(event: sse.Event, data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    return event_type(event, data) == "error" or isinstance(data.get("error"), dict) and "type" not in data


def event_type(event: sse.Event, data: Any) -> str | None:
    """A typed event's type: its `type` field, else its `event:` name."""
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else event.name


def error_event(code: str, message: str) -> bytes:
    """What ends a broken typed stream: the openai SDK raises an APIError for an event with `error`."""
    return sse.encode({"type": "error", **error_body(message, type="server_error", code=code)})


def media_usage(data: Any) -> Usage | None:
    """Token counts: input/output_tokens as prompt/completion, else an OpenAI `usage` (a rerank's total alone)."""
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    if not any(_is_count(usage.get(f)) for f in ("input_tokens", "output_tokens")):
        counted = any(_is_count(usage.get(f)) for f in ("prompt_tokens", "completion_tokens", "total_tokens"))
        return chat_usage(data) if counted else None  # e.g. a transcription's {"type": "duration"}
    counts = {name: int(usage[key]) for key, name in TOKEN_NAMES if _is_count(usage.get(key))}
    counts.setdefault("total_tokens", counts.get("prompt_tokens", 0) + counts.get("completion_tokens", 0))
    details = usage.get("input_tokens_details")
    if isinstance(details, dict) and _is_count(details.get("cached_tokens")) and details["cached_tokens"]:
        counts["cached_tokens"] = int(details["cached_tokens"])
    return counts


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _form_types(payload: dict[str, Any]) -> None:
    """A form's values are text: `stream` must read as a boolean, `n` an integer, `temperature` a number."""
    if "stream" in payload:
        flag = payload["stream"].strip().lower()
        if flag not in ("true", "false"):
            raise fields.invalid("Invalid value for 'stream': expected true or false.", "stream")
        payload["stream"] = flag == "true"
    for name in FORM_INTEGERS:
        if name in payload and not payload[name].strip().isdigit():
            raise fields.invalid(f"Invalid type for '{name}': expected an integer.", name)
    for name in FORM_NUMBERS:
        if name in payload and not _is_number(payload[name]):
            raise fields.invalid(f"Invalid type for '{name}': expected a number.", name)


def _is_number(text: str) -> bool:
    try:
        return float(text) == float(text)  # not NaN
    except ValueError:
        return False


def _check_upload(files: set[str], name: str) -> None:
    """The form carries its file (`image` may also come as `image[]`, several of them)."""
    if not files & {name, f"{name}[]"}:
        raise fields.invalid(f"Missing required parameter: '{name}' (a file).", name)


IMAGE_FIELDS: Types = {
    "n": (int,), "size": (str,), "quality": (str,), "response_format": (str,), "style": (str,), "user": (str,),
    "stream": (bool,), "partial_images": (int,), "background": (str,), "output_format": (str,),
    "output_compression": (int,), "moderation": (str,),
}  # fmt: skip
IMAGES = MediaDialect("images", "/images/generations", required={"prompt": (str,)}, optional=IMAGE_FIELDS,
                      terminal="image_generation.completed")  # fmt: skip
IMAGE_EDITS = MediaDialect("image_edits", "/images/edits", required={"prompt": (str,)}, multipart=True,
                           upload="image", terminal="image_edit.completed")  # fmt: skip
IMAGE_VARIATIONS = MediaDialect("image_variations", "/images/variations", required={}, multipart=True, upload="image")
SPEECH_EVENTS = MediaDialect("speech", "/audio/speech", required={}, terminal="speech.audio.done")
SPEECH = SpeechDialect(
    SPEECH_EVENTS,
    required={"input": (str,), "voice": (str, dict)},
    optional={"response_format": (str,), "speed": NUMBER, "instructions": (str,), "stream_format": (str,)},
)
TRANSCRIPTIONS = MediaDialect("transcriptions", "/audio/transcriptions", required={}, multipart=True, upload="file",
                              terminal="transcript.text.done")  # fmt: skip
TRANSLATIONS = MediaDialect("translations", "/audio/translations", required={}, multipart=True, upload="file")
MODERATIONS = MediaDialect("moderations", "/moderations", required={"input": (str, list)})
RERANK = RerankDialect("rerank", "/rerank", required={"query": (str,), "documents": (list,)},
                       optional={"top_n": (int,), "return_documents": (bool,)})  # fmt: skip
