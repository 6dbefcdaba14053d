"""Scenarios: from a dataset to a seeded stream of experiences (NC, NI, MT, joint)."""

from exmodel.scenarios.builders import KINDS, build_stream, subsample_per_class, validation_split
from exmodel.scenarios.stream import Experience, Stream

__all__ = ["KINDS", "Experience", "Stream", "build_stream", "subsample_per_class", "validation_split"]
