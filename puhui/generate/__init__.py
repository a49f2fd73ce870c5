"""Synthetic partner landing zone: deterministic files of the eight partner feeds.

``generate_landing_zone`` writes the files, ``faults.json`` and ``truth.json``; see
``landing.py`` for the layout, ``feeds.py`` for formats and columns, ``process.py`` for the
generating process (true PD) and ``faults.py`` for the planted bad inputs.
"""

from puhui.generate.landing import GenerateSummary, generate_landing_zone

__all__ = ["GenerateSummary", "generate_landing_zone"]
