"""Shared fixtures: where the real datasets live, and the tiny model used end to end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EAST_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real GSM8K / MATH copies beside the checkout; skip where they are absent."""
    if not (SHARED_DATA / "gsm8k" / "test.jsonl").exists():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set EAST_SHARED_DATA)")
    return SHARED_DATA
