"""Dataset generators, their parameter schemas, and the train/test split.

Each generator is one registry entry: a schema (the parameters a dataset YAML may set), a
function that makes (X, y) and a function that says which task the data poses, so a config can
be checked against a loss before any data is made. Targets are stored as floats (regression)
or class indices 0..k-1; the loss registry encodes them for the loss at training time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import MISSING

from losslab.losses import Task


@dataclass
class DatasetParams:
    """Parameters every dataset has: identity, size, seed and the split."""

    name: str = MISSING
    generator: str = MISSING
    n_samples: int = 1000
    random_state: int = 1
    n_test: int = 500
    test_first: bool = False
    standardize: bool = False
    success_accuracy: float | None = None  # test accuracy that counts as solved, for reports


@dataclass
class RegressionParams(DatasetParams):
    n_features: int = 20
    noise: float = 0.1


@dataclass
class CirclesParams(DatasetParams):
    noise: float = 0.0
    factor: float = 0.8


@dataclass
class BlobsParams(DatasetParams):
    centers: int = 3
    n_features: int = 2
    cluster_std: float = 1.0


@dataclass(frozen=True)
class Generator:
    schema: type[DatasetParams]
    make: Callable[[Any], tuple[np.ndarray, np.ndarray]]
    task: Callable[[Any], Task]


def _regression(p: RegressionParams) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_regression

    return make_regression(
        n_samples=p.n_samples, n_features=p.n_features, noise=p.noise, random_state=p.random_state
    )


def _circles(p: CirclesParams) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_circles

    return make_circles(
        n_samples=p.n_samples, noise=p.noise or None, factor=p.factor, random_state=p.random_state
    )


def _blobs(p: BlobsParams) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_blobs

    return make_blobs(
        n_samples=p.n_samples,
        centers=p.centers,
        n_features=p.n_features,
        cluster_std=p.cluster_std,
        random_state=p.random_state,
    )


GENERATORS: dict[str, Generator] = {
    "regression": Generator(RegressionParams, _regression, lambda p: Task.REGRESSION),
    "circles": Generator(CirclesParams, _circles, lambda p: Task.BINARY),
    "blobs": Generator(
        BlobsParams, _blobs, lambda p: Task.BINARY if p.centers == 2 else Task.MULTICLASS
    ),
}


@dataclass
class Dataset:
    """A split dataset; ``y_*`` are floats (regression) or class indices."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: Task
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "x_train": self.x_train,
            "y_train": self.y_train,
            "x_test": self.x_test,
            "y_test": self.y_test,
        }

    def content_hash(self) -> str:
        """SHA-256 over the arrays' names, dtypes, shapes and bytes: the data's identity."""
        digest = hashlib.sha256()
        for key, array in self.arrays().items():
            array = np.ascontiguousarray(array)
            digest.update(f"{key}:{array.dtype.str}:{array.shape};".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale with statistics of the training split only, so the test split does not leak."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std == 0, 1.0, std)
    return (train - mean) / std, (test - mean) / std


def make_dataset(params: Any) -> Dataset:
    """Generate, split and preprocess the dataset described by validated ``params``."""
    generator = GENERATORS[params.generator]
    x, y = generator.make(params)
    task = generator.task(params)
    x = x.astype("float32")
    test = slice(0, params.n_test) if params.test_first else slice(len(x) - params.n_test, None)
    train = slice(params.n_test, None) if params.test_first else slice(0, len(x) - params.n_test)
    x_train, x_test, y_train, y_test = x[train], x[test], y[train], y[test]
    if task is Task.REGRESSION:
        y_train, y_test = y_train.astype("float32"), y_test.astype("float32")
        if params.standardize:
            y_train, y_test = _standardize(y_train, y_test)
        n_classes = 0
    else:
        y_train, y_test = y_train.astype("int64"), y_test.astype("int64")
        n_classes = int(max(y_train.max(), y_test.max()) + 1)
    if params.standardize:
        x_train, x_test = _standardize(x_train, x_test)
    return Dataset(
        x_train.astype("float32"),
        y_train,
        x_test.astype("float32"),
        y_test,
        task,
        n_classes,
    )
