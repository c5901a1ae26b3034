"""research: Flax NNX layers and language models for linear-recurrent architectures.

This package exports the model side only. Training, data, tasks, probes and sweeps are
sub-packages imported by name (`import research.train as rt`, `from research.tasks import MQAR`);
they depend on the model side, never the other way round.
"""

from research.config import MIXERS, PRESETS, ModelConfig, get_preset
from research.model import LanguageModel, count_params
from research.generate import generate
