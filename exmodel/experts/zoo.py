"""The cached stream of experts.

Every strategy of a run consumes the same stream of experts, trained once per (scenario, expert
training config, seed) and cached on disk as bundles. The cache key is a hash of everything that
determines the experts, so a changed setting trains a new stream instead of silently reusing an old
one. Each finished expert is written atomically; an interrupted training resumes at the first
missing expert.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from exmodel.config import ExpertConfig, ScenarioConfig
from exmodel.experts.bundle import load_bundle, save_bundle
from exmodel.experts.expert import Expert
from exmodel.experts.train import expert_seed, train_expert
from exmodel.progress import Progress
from exmodel.scenarios import Stream

CACHE_FORMAT = 2  # bump when a default that shapes the experts changes


def default_cache_dir() -> Path:
    env = os.environ.get("EXMODEL_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "exmodel"


def stream_key(scenario: ScenarioConfig, expert: ExpertConfig, seed: int, data_fingerprint: str) -> str:
    # Only settings that differ from their defaults enter the key, so adding a new (defaulted) config
    # key does not orphan existing caches; changing a default needs a CACHE_FORMAT bump.
    blob = json.dumps({"format": CACHE_FORMAT, "scenario": scenario.model_dump(exclude_defaults=True),
                       "expert": expert.model_dump(exclude_defaults=True),
                       "seed": seed, "data": data_fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def expert_stream(stream: Stream, scenario: ScenarioConfig, expert_cfg: ExpertConfig, seed: int, data_fingerprint: str,
                  cache_dir: Path | None = None, *, device: str = "cpu", progress: Progress | None = None,
                  on_event=None) -> tuple[list[Expert], Path]:
    """Load the cached experts for this stream, training the missing ones."""
    root = (cache_dir or default_cache_dir()) / "experts" / f"{stream.name}-{stream_key(scenario, expert_cfg, seed, data_fingerprint)}"
    experts = []
    for exp in stream:
        path = root / f"expert-{exp.index:03d}"
        if (path / "card.json").is_file():
            experts.append(load_bundle(path))
            continue
        init = expert_seed(seed, 999) if expert_cfg.shared_init else None
        e = train_expert(stream, exp, expert_cfg, expert_seed(seed, exp.index), init_seed=init, device=device,
                         progress=progress)
        save_bundle(e, path)
        experts.append(load_bundle(path))
        if on_event:
            on_event("expert_trained", experience=exp.index, classes=list(exp.classes), test_accuracy=e.card.test_accuracy,
                     path=str(path))
    return experts, root
