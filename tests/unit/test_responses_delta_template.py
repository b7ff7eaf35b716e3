"""The translated stream's text delta events come from a per-item template: byte for byte what the general event
writer makes, whatever the text (quotes, escapes, non-ASCII, surrogate pairs), for message and reasoning items."""

from __future__ import annotations

import pytest

from app.dialects.responses_chat_stream import _PART_EVENTS, ChatStreamTranslator, _Item


class Reference(ChatStreamTranslator):
    """The delta event through `_event`, as every other event is written."""

    def _delta_event(self, item: _Item, text: str) -> bytes:
        _, text_event, index_key = _PART_EVENTS[item.kind]
        extra = {"logprobs": []} if item.kind == "message" else {}
        return self._event(f"{text_event}.delta", item_id=item.id, output_index=item.index, **{index_key: 0},
                           delta=text, **extra)  # fmt: skip


TEXTS = ["plain", 'quo"te\\back', "line\nbreak\ttab\x01", "é ü 中文", "emoji 🚀", "</script>", " ", "{}[],:"]


def chunks(field: str) -> list[dict]:
    return [{"model": "m", "choices": [{"index": 0, "delta": {field: text}}]} for text in TEXTS]


@pytest.mark.parametrize("fields", [("content",), ("reasoning_content",), ("reasoning_content", "content")])
def test_template_events_are_the_general_writers_bytes(fields):
    request = {"model": "m", "input": "hi", "stream": True}
    mine = ChatStreamTranslator(request, response_id="resp_1", created_at=1)
    reference = Reference(request, response_id="resp_1", created_at=1)
    for field in fields:
        for chunk in chunks(field):
            assert mine.feed(chunk) == reference.feed(chunk)
    assert mine.finish() == reference.finish()
