"""The observer page's pure modules (the stream's state machine, the table's logic), tested with Node's runner."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PAGE_TESTS = Path(__file__).resolve().parent / "page"


def test_the_pages_pure_modules_pass_their_node_tests() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip(f"node is not installed: the page's module tests ({PAGE_TESTS}/*.test.mjs) need Node.js 20+")
    files = sorted(str(p) for p in PAGE_TESTS.glob("*.test.mjs"))
    assert files, f"no *.test.mjs under {PAGE_TESTS}"
    result = subprocess.run([node, "--test", *files], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"node --test failed:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
