"""The training engine: typed configuration, the :class:`Trainer`, checkpoints, logging, several processes.

- :mod:`.config`: :class:`TrainConfig` (every field typed and checked) and YAML recipes.
- :mod:`.trainer`: :class:`Trainer` (set-up, resume, epoch, evaluate, save) and :func:`train`.
- :mod:`.checkpoint`: atomic writes and checked reads of checkpoints.
- :mod:`.logging`: metrics files, TensorBoard, progress bar.
- :mod:`.evaluate`: the trainer's accuracy/loss evaluation (also over torchrun processes).
- :mod:`.distributed`: the trainer's side of torchrun (DDP step module, rank-0-first work, failures).
"""

from .checkpoint import CheckpointError, load_checkpoint
from .config import SCHEDULES, TrainConfig, bundled_configs, load_recipe
from .distributed import DistributedError
from .trainer import NonFiniteLossError, Trainer, build_data_and_model, load_trained, resolve_device, train

__all__ = ["TrainConfig", "SCHEDULES", "bundled_configs", "load_recipe", "Trainer", "train", "NonFiniteLossError",
           "CheckpointError", "DistributedError", "load_checkpoint", "load_trained", "build_data_and_model",
           "resolve_device"]
