"""mega-audio: audio foundation models on neural-codec tokens."""

__version__ = "0.1.0"
