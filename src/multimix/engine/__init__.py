"""The training engine: typed configuration, the :class:`Trainer`, checkpoints, logging, several processes.

- :mod:`.config`: :class:`TrainConfig` (every field typed and checked) and YAML recipes.
- :mod:`.trainer`: :class:`Trainer` (set-up, resume, epoch, evaluate, save) and :func:`train`.
- :mod:`.build`: the run's data, model, optimiser and schedule from its config.
- :mod:`.identity`: what a resumed run must share with its checkpoint; a trained model read back.
- :mod:`.processes`: torchrun's processes around a run, per-rank seeds.
- :mod:`.checkpoint`: atomic writes and checked reads of checkpoints (``weights_only``).
- :mod:`.folder`: one writer per output folder (an exclusive lock).
- :mod:`.signals`: SIGINT/SIGTERM as a request to stop between steps.
- :mod:`.logging`: metrics files, TensorBoard, progress bar.
- :mod:`.evaluate`: the trainer's accuracy/loss evaluation (also over torchrun processes).
- :mod:`.distributed`: the trainer's side of torchrun (DDP step module, rank-0-first work, failures).
"""

from .checkpoint import CheckpointError, load_checkpoint
from .config import SCHEDULES, TrainConfig, bundled_configs, load_recipe
from .distributed import DistributedError
from .build import build_data_and_model
from .config import resolve_device
from .identity import load_trained
from .trainer import NonFiniteLossError, Trainer, train

__all__ = ["TrainConfig", "SCHEDULES", "bundled_configs", "load_recipe", "Trainer", "train", "NonFiniteLossError",
           "CheckpointError", "DistributedError", "load_checkpoint", "load_trained", "build_data_and_model",
           "resolve_device"]
