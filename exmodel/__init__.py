"""exmodel: continual learning from a stream of trained models."""

__version__ = "0.1.0"
