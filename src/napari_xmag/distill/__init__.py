"""XMAG distillation: a 20x teacher distilled into a 5x student.

>>> from napari_xmag.distill import TrainConfig, train               # doctest: +SKIP
>>> result = train(TrainConfig(slides="slides.csv", out_dir="runs/xmag", cache="runs/cache.zarr"))
>>> model = create_model(result.export_dir)                            # doctest: +SKIP

Modules, one job each: ``pairs`` (which pairs, reading them), ``augment`` (the shared views),
``teacher`` (running the frozen teacher), ``cache`` (teacher targets on disk), ``losses``,
``optim`` (AdamW groups, schedule, EMA), ``order`` (resumable data order), ``checkpoint``,
``runlog`` (CSV, TensorBoard, progress), ``evaluate`` (held-out metrics), ``config`` and
``trainer``. See docs/distillation.md.
"""

from .augment import FLIP_VARIANTS, View, apply_view, draw_views
from .cache import CacheMismatchError, TeacherCache, build_teacher_cache
from .config import TrainConfig
from .evaluate import (
    Alignment,
    alignment,
    constant_alignment,
    predict,
    read_eval_set,
    spatial_split,
    training_means,
)
from .losses import DistillLoss, block_tokens, distillation_loss
from .pairs import (
    PairDataset,
    PairIndex,
    PairSettings,
    SlideEntry,
    SlideListError,
    read_pair,
    read_slide_list,
)
from .runlog import read_log
from .trainer import EXPORT_NAME, NoPairsError, TrainError, TrainResult, train

__all__ = [
    "EXPORT_NAME",
    "FLIP_VARIANTS",
    "Alignment",
    "CacheMismatchError",
    "DistillLoss",
    "NoPairsError",
    "PairDataset",
    "PairIndex",
    "PairSettings",
    "SlideEntry",
    "SlideListError",
    "TeacherCache",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "View",
    "alignment",
    "apply_view",
    "block_tokens",
    "build_teacher_cache",
    "constant_alignment",
    "distillation_loss",
    "draw_views",
    "predict",
    "read_eval_set",
    "read_log",
    "read_pair",
    "read_slide_list",
    "spatial_split",
    "train",
    "training_means",
]
