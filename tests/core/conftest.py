"""Fixtures of the core tests.

The CLI configures the ``fmabs_edge`` logger with its own handler and ``propagate = False``; a
test that invoked the CLI earlier in the session would hide every later log record from
``caplog``. The fixture below restores propagation around each test of this folder.
"""

from __future__ import annotations

import logging
from typing import Iterator

import pytest


@pytest.fixture(autouse=True)
def _fmabs_logs_reach_caplog() -> Iterator[None]:
    package_logger = logging.getLogger("fmabs_edge")
    propagate, level = package_logger.propagate, package_logger.level
    handlers = list(package_logger.handlers)
    package_logger.propagate = True
    package_logger.handlers[:] = []
    package_logger.setLevel(logging.NOTSET)
    yield
    package_logger.propagate = propagate
    package_logger.handlers[:] = handlers
    package_logger.setLevel(level)
