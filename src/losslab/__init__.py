"""losslab: reproducible experiments on how the loss function changes how a Keras model learns."""

import os

# The machines losslab runs on reach no network beyond package registries: no usage reports,
# and TensorFlow's start-up chatter stays out of the progress output.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
