"""losslab: reproducible experiments on how the loss function changes how a Keras model learns."""

import logging
import os

# The machines losslab runs on reach no network beyond package registries: no usage reports;
# and no progress bar per artifact logged.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# TensorFlow's C++ logging shows errors only (TF_CPP_MIN_LOG_LEVEL 0 shows all, 1 all but
# notes, 2 errors, 3 nothing); a level the user set is kept as set.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN's custom operations, on by default on some x86 CPUs only, reorder floating-point sums:
# the same run would give other numbers on another machine. Off, a run gives the same numbers
# on every CPU, small models train faster, and TensorFlow does not announce them on stderr at
# import, before it reads its log level.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

# A fresh MLflow store announces each step of creating its tables; its warnings still show.
for _name in ("mlflow.store.db.utils", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)

__version__ = "0.1.0"
