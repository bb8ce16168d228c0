"""Fixtures shared by every tier: unique names, so tests never see each other's data."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def unique() -> str:
    """A short random token to make queue, program and schema names unique to one test."""
    return uuid.uuid4().hex[:10]
