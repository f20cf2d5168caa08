"""kdbench: one harness that trains, measures and ranks compression / KD methods."""

__version__ = "0.1.0"
