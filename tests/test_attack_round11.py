"""Attack round 11: the code round 10 landed, attacked (see README, "Round 11")."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from puhui.config import (
    MAX_CONFIG_BYTES,
    check_config_dir,
    config_hash,
    validate_config_dir,
)
from puhui.errors import PuhuiError
from puhui.settings import repo_root

CONFIGS = repo_root() / "configs"


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """A blocking read (a FIFO's) fails the test instead of hanging the suite."""
    def expired(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _plant(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    elif kind == "not utf-8":
        path.write_bytes(b"products:\n  - name: \"\xff\xfe\"\n")
    else:  # oversized: valid YAML, a comment past the cap
        path.write_bytes(b"products: []\n#" + b"x" * MAX_CONFIG_BYTES + b"\n")


@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "not utf-8", "oversized"])
def test_a_hostile_config_file_is_one_line_naming_it(tmp_path: Path, kind: str) -> None:
    """`config check` waited for good on a FIFO, read /dev/zero to a MemoryError, and printed
    IsADirectoryError / UnicodeDecodeError without the file's name; an extra FIFO `*.yaml`
    passed check_config_dir and blocked the run's config hash after Prefect started."""
    configs, extra = tmp_path / "configs", tmp_path / "extra"
    for folder in (configs, extra):
        shutil.copytree(CONFIGS, folder)
    (configs / "products.yaml").unlink()
    _plant(configs / "products.yaml", kind)
    with _deadline(20), pytest.raises(PuhuiError) as refused:
        validate_config_dir(configs)
    line = str(refused.value)
    assert line.startswith(f"{configs / 'products.yaml'}:") and "\n" not in line, line
    if kind in ("fifo", "device", "folder"):
        _plant(extra / "extra.yaml", kind)
        with _deadline(20):
            for check in (check_config_dir, config_hash):
                with pytest.raises(PuhuiError, match="extra.yaml: not a regular file"):
                    check(extra)

