"""farm: benchmark small language models on phones and edge boards, reproducibly."""

__version__ = "0.1.0"
