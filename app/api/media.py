"""Thin views of the rest of the OpenAI surface: images, audio, moderations, rerank (placeholder; see openai_media)."""

from __future__ import annotations
