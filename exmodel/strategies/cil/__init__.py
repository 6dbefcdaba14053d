"""Class-incremental learning from data (``kind: cil``): the reference baselines, one file each.

``ft`` · ``lwf_mc`` · ``ewc`` · ``online_ewc`` · ``si`` · ``mas`` (exemplar-free) and ``er`` ·
``icarl`` (exemplar memory). ``joint`` (exmodel/strategies/joint.py) is the upper bound. They share
:class:`~exmodel.strategies.cil.incremental.IncrementalLearner`; losses are pure functions in
``losses.py`` and importances in ``importance.py``.
"""

from exmodel.strategies.cil import er, ewc, ft, icarl, lwf_mc, mas, si  # noqa: F401  (registration)
from exmodel.strategies.cil.incremental import CILParams, IncrementalLearner

__all__ = ["CILParams", "IncrementalLearner"]
