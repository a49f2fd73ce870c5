"""Synthetic partner landing zone: deterministic files of the eight partner feeds.

``generate_landing_zone`` writes the files, ``faults.json`` and ``truth.json``; see
``landing.py`` for the layout, ``feeds.py`` for formats and columns, ``process.py`` for the
generating process (true PD), ``faults.py`` for the planted bad inputs and ``truth.py`` for
reading the truth files back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from puhui.generate.landing import GenerateSummary, generate_landing_zone

__all__ = ["GenerateSummary", "generate_landing_zone"]


def __getattr__(name: str) -> object:
    # Loaded on first use: readers of the truth files (puhui.generate.truth, imported by
    # the evaluations) must not load the writer and its feeds with the package.
    if name in __all__:
        from puhui.generate import landing

        return getattr(landing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
