"""The benches check their images before anything starts (bench/harness.py built_images):
`bench.auth_start` run where its default images directory holds none stops at once, exit
status 2, naming the missing image and the option, instead of waiting 600 s for a warm pool
VM that cannot boot. Run as a real process, as an operator runs it."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.harness import built_images

REPO = Path(__file__).resolve().parents[2]


def built(images: Path, name: str) -> None:
    (images / name).mkdir(parents=True)
    (images / name / "manifest.json").write_text(json.dumps({"name": name}))


def test_auth_start_without_images_fails_at_once_naming_the_image_and_the_option(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        "HEARTH_TEST_IMAGES": str(tmp_path),  # the default --images-dir, empty
    }
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bench.auth_start", "--providers", "demo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - began < 30  # nothing was started to wait for
    error = done.stderr.splitlines()[-1]
    assert f"no built browser image in {tmp_path}" in error
    assert "--images-dir" in error and "hearth image build browser" in error
    assert done.stdout == ""


def test_built_images_names_only_what_is_missing_and_resolves_what_is_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="bench")
    built(tmp_path / "images", "browser")
    with pytest.raises(SystemExit) as stopped:
        built_images(parser, tmp_path / "images", "browser", "cli")
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "no built cli image in" in error and "browser" not in error.split("image in")[0]

    built(tmp_path / "images", "cli")
    relative = Path(os.path.relpath(tmp_path / "images"))
    assert built_images(parser, relative, "browser", "cli") == (tmp_path / "images").resolve()
