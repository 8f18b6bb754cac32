"""RL algorithms: the registry (`registry`), advantage estimators (`advantages`) and losses (`losses`).

This package's import stays light (the registry has no torch) so config validation can ask it;
import `megarl.algorithms.advantages` / `megarl.algorithms.losses` for the tensor functions.
"""

from megarl.algorithms.registry import AlgorithmSpec, algorithm_names, get_algorithm, register_algorithm

__all__ = ["AlgorithmSpec", "algorithm_names", "get_algorithm", "register_algorithm"]
