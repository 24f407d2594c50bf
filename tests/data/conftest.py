"""Fixtures of the data tests: the loopback HTTP server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .loopback import Loopback, serve


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    with serve() as server:
        yield server
