"""Scenarios: from a dataset to a seeded stream of experiences (NC, NI, MT, joint, CIL)."""

from exmodel.scenarios.builders import KINDS, build_stream, subsample_per_class, validation_split
from exmodel.scenarios.cil import CILProtocol
from exmodel.scenarios.stream import Experience, Stream

__all__ = ["KINDS", "CILProtocol", "Experience", "Stream", "build_stream", "subsample_per_class", "validation_split"]
