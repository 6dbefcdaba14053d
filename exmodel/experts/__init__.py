"""Experts: cards, safe bundles (safetensors + JSON), training and the cached stream of experts."""

from exmodel.experts.bundle import inspect_bundle, load_bundle, load_card, save_bundle
from exmodel.experts.card import ExpertCard
from exmodel.experts.expert import Expert, to_global

__all__ = ["Expert", "ExpertCard", "inspect_bundle", "load_bundle", "load_card", "save_bundle", "to_global"]
