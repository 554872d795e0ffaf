"""Where the files shipped with pijax live (the stories260K model, TinyStories text)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
STORIES260K = ASSETS / "stories260K.gguf"
TINYSTORIES = ASSETS / "tinystories_valid_head.txt"
