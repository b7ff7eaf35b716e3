"""Thin views of the rest of the OpenAI surface: images, audio, moderations, rerank (see app/dialects/openai_media)."""

from __future__ import annotations

from flask import Response

from app.api.blueprint import bp
from app.api.proxy import proxy
from app.dialects import openai_media as media


@bp.post("/images/generations")
def images_generations() -> Response:
    """Proxy an image generation (gpt-image streams pass through)."""
    return proxy(media.IMAGES)


@bp.post("/images/edits")
def images_edits() -> Response:
    """Proxy an image edit (a multipart upload)."""
    return proxy(media.IMAGE_EDITS)


@bp.post("/images/variations")
def images_variations() -> Response:
    """Proxy an image variation (a multipart upload)."""
    return proxy(media.IMAGE_VARIATIONS)


@bp.post("/audio/speech")
def audio_speech() -> Response:
    """Proxy text to speech: the audio is relayed as it arrives."""
    return proxy(media.SPEECH)


@bp.post("/audio/transcriptions")
def audio_transcriptions() -> Response:
    """Proxy a transcription (a multipart upload), streamed or not."""
    return proxy(media.TRANSCRIPTIONS)


@bp.post("/audio/translations")
def audio_translations() -> Response:
    """Proxy a translation (a multipart upload)."""
    return proxy(media.TRANSLATIONS)


@bp.post("/moderations")
def moderations() -> Response:
    """Proxy a moderation request."""
    return proxy(media.MODERATIONS)


@bp.post("/rerank")
def rerank() -> Response:
    """Proxy a rerank request (the vLLM, Jina and Cohere-compatible form)."""
    return proxy(media.RERANK)
