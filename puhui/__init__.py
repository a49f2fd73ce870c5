"""Puhui: the data and model lifecycle of an inclusive-finance lender."""

__version__ = "0.1.0"
