"""Teachers: SASRec, GRU4Rec and Caser (plus the popularity floor), trained on train items only,
evaluated by full ranking and on the shared candidate sets, and exported for the distillation stage.

Entry points: ``run_teachers`` (the stage, used by notebook 02 and ``python -m delrec_lib
teachers``), ``train_teacher`` (one teacher: ``fit`` through the shared Trainer, evaluate,
export), ``load_teacher`` (a checked, ready-to-score model), ``read_exports`` (the tables).
The file layout of an export is documented in ``stage.py``.
"""

from .base import SequentialRecommender, TrainBatch, left_pad
from .caser import Caser
from .evaluation import model_scorer
from .gru4rec import GRU4Rec
from .popularity import popularity_scorer, train_popularity
from .sasrec import SASRec
from .stage import (
    MODELS,
    POPULARITY,
    LoadedTeacher,
    TeacherResult,
    build_model,
    export_model,
    export_popularity,
    export_spec,
    fit,
    load_teacher,
    read_exports,
    run_teachers,
    teacher_spec,
    train_teacher,
)

__all__ = [
    "MODELS",
    "POPULARITY",
    "Caser",
    "GRU4Rec",
    "LoadedTeacher",
    "SASRec",
    "SequentialRecommender",
    "TeacherResult",
    "TrainBatch",
    "build_model",
    "export_model",
    "export_popularity",
    "export_spec",
    "fit",
    "left_pad",
    "load_teacher",
    "model_scorer",
    "popularity_scorer",
    "read_exports",
    "run_teachers",
    "teacher_spec",
    "train_popularity",
    "train_teacher",
]
