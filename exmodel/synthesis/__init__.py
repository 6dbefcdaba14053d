"""Knowledge sources: where ex-model distillation gets its images (paper Sec. 4) and the natural-image
priors that make optimised images look more natural (Sec. 4.1). Importing this package registers
every built-in source; see ``README.md`` here for how to add one."""

from exmodel.synthesis.augment import AUGMENTATIONS, make_augmentation
from exmodel.synthesis.base import (KnowledgeSource, SourceParams, balanced_labels, build_source, list_sources,
                                    register_source, source_class)

# Imported for their side effect: each module registers its source.
from exmodel.synthesis import auxiliary, delegator_source, generative, impression, inversion, noise, replay  # noqa: E402,F401  isort: skip

__all__ = ["AUGMENTATIONS", "KnowledgeSource", "SourceParams", "balanced_labels", "build_source", "list_sources",
           "make_augmentation", "register_source", "source_class"]
