"""The one place Sluice's version lives."""

__version__ = "0.1.0"
