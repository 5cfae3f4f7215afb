"""A skip for a missing Debian package fails the suite where every package should be there
(tests/packages.py), and stays a skip elsewhere; other skips are left alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.packages import STRICT_ENV

ROOT = Path(__file__).resolve().parents[2]
TESTS = """
import pytest
from tests.packages import missing

def test_needs_a_package():
    pytest.skip(missing("frobnicator"))

def test_needs_root():
    pytest.skip("needs root")
"""


@pytest.mark.parametrize("strict", [False, True])
def test_a_missing_package_fails_only_where_all_should_be_installed(tmp_path, strict):
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_runtest_makereport  # noqa: F401\n"
    )
    (tmp_path / "test_skips.py").write_text(TESTS)
    env = {k: v for k, v in os.environ.items() if k != STRICT_ENV}
    env["PYTHONPATH"] = str(ROOT)
    if strict:
        env[STRICT_ENV] = "1"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = run.stdout.strip().splitlines()[-1]
    if strict:
        assert run.returncode == 1 and "1 failed, 1 skipped" in summary, run.stdout
        assert "frobnicator: scripts/bootstrap.sh should have installed it" in run.stdout
    else:
        assert run.returncode == 0 and "2 skipped" in summary, run.stdout
