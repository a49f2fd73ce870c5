"""The tests' ambient PUHUI_HOME is the session's own folder, never the repository's
``./.puhui``: without it, tests that run ``puhui`` without ``puhui_env`` read (and ``audit
verify`` wrote) the developer's store under ``-n 0`` (8 failures of test_audit.py on a repo
whose ``.puhui`` held a model)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from puhui.settings import load_settings

REPO = Path(__file__).resolve().parent.parent


def test_the_ambient_home_is_outside_the_repository() -> None:
    home = load_settings().home
    assert not home.is_relative_to(REPO), home


def test_the_ambient_home_is_the_sessions_own_not_a_given_one() -> None:
    """A developer's exported PUHUI_HOME (``~/.puhui``) is outside the repository too: the
    test above passed with it. The home must be this test process's mkdtemp folder."""
    home = load_settings().home
    session = home.parent
    assert home == Path(os.environ["PUHUI_HOME"]).resolve() and home.name == "puhui", home
    assert session.name.startswith("puhui-test-session-"), home
    assert session.parent == Path(tempfile.gettempdir()).resolve(), home
