"""Wire dialects: one object per API, and the translators between them."""
