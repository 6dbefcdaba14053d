"""Networks for exmodel: a name-based registry and one interface (forward_features / forward_head).

Importing this package registers every built-in architecture; see ``README.md`` here for how to add
one.
"""

from exmodel.models.base import ExModelNet
from exmodel.models.registry import build_model, list_models, model_signature, register_model

# Imported for their side effect: each module registers its factories.
from exmodel.models import efficientnet_lite, lenet, mlp, mobilenet, resnet  # noqa: E402,F401  isort: skip

__all__ = ["ExModelNet", "build_model", "list_models", "model_signature", "register_model"]
