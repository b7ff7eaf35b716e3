"""Per-model options of the bundled mock upstream, and the errors its `context_window` and `refuse` options answer.

The overrides are `{"<model id>": {<Options field>: value}}`, set at start (`--model-options JSON`) or at run
time (`POST /_mock/models`); checked once here, so a request only looks its model up. The 400 bodies are the
real providers' shapes: a prompt over the context window, or a content-policy refusal, OpenAI's or Anthropic's.
"""

from __future__ import annotations

from dataclasses import Field
from typing import Any

# The Python types a value may have, by the annotation of the Options field (bool is not an int here).
_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,)}


def parse_overrides(raw: Any, fields: dict[str, Field]) -> dict[str, dict]:
    """The per-model overrides in `raw`, checked against the Options `fields`; ValueError names what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError('Expected a JSON object {"<model id>": {<option>: value}}.')
    overrides = {}
    for model, options in raw.items():
        if not isinstance(options, dict):
            raise ValueError(f"The options of model {model!r} must be a JSON object.")
        for name, value in options.items():
            if name not in fields:
                raise ValueError(f"Unknown mock option {name!r} for model {model!r}; known: {', '.join(fields)}.")
            if not _fits(value, str(fields[name].type)):
                raise ValueError(f"Option {name!r} of model {model!r} must be {fields[name].type}, not {value!r}.")
        overrides[model] = dict(options)
    return overrides


def _fits(value: Any, annotation: str) -> bool:
    """Whether `value` fits an annotation such as "int | None" (the Options fields are simple types)."""
    kinds = [kind.strip() for kind in annotation.split("|")]
    if value is None:
        return "None" in kinds
    if isinstance(value, bool):
        return "bool" in kinds
    return any(isinstance(value, _TYPES.get(kind, ())) for kind in kinds)


def requested_model(body: Any) -> str | None:
    """The model a request names: a JSON body's `model`, or a multipart form's `model` field."""
    if not isinstance(body, dict):
        return None
    form = body.get("form")
    model = body.get("model", form.get("model") if isinstance(form, dict) else None)
    return model if isinstance(model, str) else None


def policy_error(opts: Any, prompt_tokens: int, anthropic: bool = False) -> dict | None:
    """The 400 body for a prompt over `opts.context_window` tokens, else for `opts.refuse`, else None; in
    Anthropic's error shape when `anthropic`, else OpenAI's."""
    limit = opts.context_window
    if limit is not None and prompt_tokens > limit:
        if anthropic:
            return _anthropic(f"prompt is too long: {prompt_tokens} tokens > {limit} maximum")
        message = (
            f"This model's maximum context length is {limit} tokens. However, your messages resulted in "
            f"{prompt_tokens} tokens. Please reduce the length of the messages."
        )
        return _openai(message, "messages", "context_length_exceeded")
    if opts.refuse:
        if anthropic:
            return _anthropic("Output blocked by content filtering policy")
        return _openai("Your request was rejected as a result of our safety system.", None, "content_policy_violation")
    return None


def _openai(message: str, param: str | None, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def _anthropic(message: str) -> dict:
    return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
