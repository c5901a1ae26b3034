"""research: Flax NNX layers and language models for linear-recurrent architectures.

Other packages of `research` (train, data, tasks, probes) add their exports below, one line each.
"""

from research.config import MIXERS, PRESETS, ModelConfig, get_preset
from research.model import LanguageModel, count_params
from research.generate import generate
from research import data, train  # noqa: E402,F401  (research.data, research.train: issue 6)
