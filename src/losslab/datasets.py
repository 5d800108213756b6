"""Dataset generators, their parameter schemas, and the train/test split.

Each generator is one registry entry: a schema (the parameters a dataset YAML may set), a
function that makes (X, y) and a function that says which task the data poses, so a config can
be checked against a loss before any data is made. Synthetic data is split by position, as the
reference studies do; real data (scikit-learn's bundled datasets, the user's CSV) at random,
stratified by class. Targets are stored as floats (regression) or class indices 0..k-1 into the
sorted original labels; the loss registry encodes them for the loss at training time.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from omegaconf import MISSING

from losslab.losses import Task


@dataclass
class DatasetParams:
    """Parameters every dataset has: identity, seed and preprocessing."""

    name: str = MISSING
    generator: str = MISSING
    random_state: int = 1  # the generator's seed, or for real data the split's
    standardize: bool = False
    success_accuracy: float | None = None  # test accuracy that counts as solved, for reports
    # corruptions of the training split only, seeded by random_state; the test split stays clean
    label_noise: float = 0.0  # classification: share of labels replaced by another class
    outliers: float = 0.0  # regression: share of targets shifted by OUTLIER_SHIFT std
    imbalance: float = 1.0  # classification: share of rows kept in every class but the largest


@dataclass
class SyntheticParams(DatasetParams):
    """Generated data; the last ``n_test`` samples are the test split (the first, if
    ``test_first``)."""

    n_samples: int = 1000
    n_test: int = 500
    test_first: bool = False


@dataclass
class RegressionParams(SyntheticParams):
    n_features: int = 20
    noise: float = 0.1


@dataclass
class CirclesParams(SyntheticParams):
    noise: float = 0.0
    factor: float = 0.8


@dataclass
class BlobsParams(SyntheticParams):
    centers: int = 3
    n_features: int = 2
    cluster_std: float = 1.0


@dataclass
class RealParams(DatasetParams):
    """Data that exists already: a shuffled split of ``test_size``, stratified by class for
    classification, so both splits keep the class shares."""

    test_size: float = 0.25
    standardize: bool = True


class Loader(Enum):
    """The datasets that ship inside scikit-learn, so they need no download."""

    breast_cancer = "breast_cancer"
    digits = "digits"
    diabetes = "diabetes"
    wine = "wine"
    iris = "iris"


LOADER_TASKS = {
    Loader.breast_cancer: Task.BINARY,
    Loader.digits: Task.MULTICLASS,
    Loader.diabetes: Task.REGRESSION,
    Loader.wine: Task.MULTICLASS,
    Loader.iris: Task.MULTICLASS,
}


@dataclass
class SklearnParams(RealParams):
    loader: Loader = MISSING


@dataclass
class CsvParams(RealParams):
    """A CSV file with a header: ``target`` is one column, every other column a feature."""

    path: str = MISSING
    target: str = MISSING
    task: str | None = None  # None: float target → regression; 2 classes binary; more multiclass


@dataclass(frozen=True)
class Generator:
    schema: type[DatasetParams]
    make: Callable[[Any], tuple[np.ndarray, np.ndarray]]
    task: Callable[[Any], Task]


def _refuse(message: str) -> NoReturn:
    from losslab.config import ConfigError  # imported here: config imports this registry

    raise ConfigError(message)


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


def _bundled(p: SklearnParams) -> tuple[np.ndarray, np.ndarray]:
    """Features and targets; class targets as their names, so the mapping says what they are."""
    import sklearn.datasets

    load = getattr(sklearn.datasets, f"load_{p.loader.name}")
    # diabetes ships scaled with statistics of all rows, test rows included; take the raw values
    bunch = load(scaled=False) if p.loader is Loader.diabetes else load()
    if LOADER_TASKS[p.loader] is Task.REGRESSION:
        return bunch.data, bunch.target
    return bunch.data, np.asarray(bunch.target_names)[bunch.target]


def _listed(values: Any, limit: int = 8) -> str:
    values = [str(value) for value in values]
    return ", ".join(values[:limit]) + (", …" if len(values) > limit else "")


def _read_csv(p: CsvParams) -> tuple[np.ndarray, np.ndarray, Task]:
    """Features, raw target and task of the user's CSV, or a ConfigError saying what is wrong."""
    import pandas as pd

    where = f"dataset.path: {p.path}"
    if not Path(p.path).is_file():
        _refuse(f"{where} does not exist (relative paths start at {Path.cwd()})")
    try:
        frame = pd.read_csv(p.path)
    except pd.errors.EmptyDataError:
        _refuse(f"{where} is empty")
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as error:
        _refuse(f"{where} is not a readable CSV ({str(error).strip()})")
    if frame.empty:
        _refuse(f"{where} has a header but no rows")
    if p.target not in frame.columns:
        _refuse(
            f"dataset.target: '{p.target}' is not a column of {p.path}; "
            f"columns: {_listed(frame.columns, limit=20)}"
        )
    missing = frame.isna().to_numpy()
    if missing.any():
        rows, count = np.flatnonzero(missing.any(axis=1)) + 1, int(missing.sum())
        _refuse(
            f"{where} has {count} NaN value{'s' * (count > 1)} (data rows {_listed(rows)}; "
            f"columns {_listed(frame.columns[missing.any(axis=0)])}); fill or drop them"
        )
    features = frame.drop(columns=p.target)
    if features.columns.empty:
        _refuse(f"{where} has no feature columns besides the target '{p.target}'")
    text = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if text:
        _refuse(
            f"{where} has non-numeric feature columns: {_listed(text, limit=20)}; "
            "encode them as numbers or drop them"
        )
    task = _csv_task(p, frame[p.target])
    y = frame[p.target].to_numpy()
    _check_split(len(frame), None if task is Task.REGRESSION else y, p.test_size, p.path)
    return features.to_numpy(dtype="float32"), y, task


def _csv_task(p: CsvParams, target: Any) -> Task:
    """The task ``p.task`` names, checked against the target column, or the one it implies."""
    import pandas as pd

    column = f"column '{p.target}' of {p.path}"
    if p.task is not None and p.task not in {task.value for task in Task}:
        _refuse(
            f"dataset.task: '{p.task}' is not known; choose one of: "
            f"{', '.join(task.value for task in Task)} (or null to infer it from the target)"
        )
    if p.task is None and pd.api.types.is_float_dtype(target):
        return Task.REGRESSION
    if p.task == Task.REGRESSION:
        if not pd.api.types.is_numeric_dtype(target):
            text = target[pd.to_numeric(target, errors="coerce").isna()].iloc[0]
            _refuse(
                f"dataset.task: regression needs a numeric target, but {column} holds "
                f"text such as '{text}'"
            )
        return Task.REGRESSION
    labels = np.unique(target.to_numpy())
    if len(labels) < 2:
        _refuse(
            f"dataset.target: {column} has a single class ('{labels[0]}'); "
            "classification needs at least two"
        )
    if p.task == Task.BINARY and len(labels) != 2:
        _refuse(
            f"dataset.task: binary needs 2 classes, but {column} has {len(labels)} "
            f"({_listed(labels)}); use multiclass"
        )
    if p.task is None:
        return Task.BINARY if len(labels) == 2 else Task.MULTICLASS
    return Task(p.task)


def _check_split(n_rows: int, labels: np.ndarray | None, test_size: float, source: str) -> None:
    """Refuse data too small for the split: both parts non-empty and, for class ``labels``,
    every class in both (at least 2 rows of each class, as many test and train rows as classes)."""
    n_test = math.ceil(test_size * n_rows)
    n_train = n_rows - n_test
    sizes = f"dataset.test_size: {test_size} of the {n_rows} rows of {source} leaves"
    if labels is None:
        if n_train < 1:
            _refuse(f"{sizes} no train rows; lower test_size or add rows")
        return
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        _refuse(
            f"dataset.target: class '{classes[counts.argmin()]}' has only 1 row in {source}; "
            "a stratified split needs at least 2 of every class"
        )
    if min(n_test, n_train) < len(classes):
        _refuse(
            f"{sizes} {n_test} test and {n_train} train rows; a stratified split of "
            f"{len(classes)} classes needs at least {len(classes)} of each"
        )


GENERATORS: dict[str, Generator] = {
    "regression": Generator(RegressionParams, _regression, lambda p: Task.REGRESSION),
    "circles": Generator(CirclesParams, _circles, lambda p: Task.BINARY),
    "blobs": Generator(
        BlobsParams, _blobs, lambda p: Task.BINARY if p.centers == 2 else Task.MULTICLASS
    ),
    "sklearn": Generator(SklearnParams, _bundled, lambda p: LOADER_TASKS[p.loader]),
    "csv": Generator(CsvParams, lambda p: _read_csv(p)[:2], lambda p: _read_csv(p)[2]),
}


def corrupted_name(task: Task) -> str:
    """The corruption mask's name in dataset.npz: ``outlier_train`` or ``noisy_train``."""
    return "outlier_train" if task is Task.REGRESSION else "noisy_train"


OUTLIER_SHIFT = 10.0
"""How far an outlier's target moves, in standard deviations of the training targets."""


@dataclass
class Dataset:
    """A split dataset; ``y_*`` are floats (regression) or indices into ``classes``.

    ``classes`` are the original labels as text (empty for regression), the mapping a user
    needs to read predictions; ``target_scale`` is the mean and std that standardized regression
    targets (None when they were not), so errors can be reported in the data's units.
    ``corrupted`` marks the training rows whose label was flipped or target shifted.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: Task
    classes: list[str]
    target_scale: dict[str, float] | None
    corrupted: np.ndarray

    @property
    def corrupted_name(self) -> str:
        return corrupted_name(self.task)

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "x_train": self.x_train,
            "y_train": self.y_train,
            "x_test": self.x_test,
            "y_test": self.y_test,
            self.corrupted_name: self.corrupted,
        }

    def content_hash(self) -> str:
        """SHA-256 over the arrays' names, dtypes, shapes and bytes: the data's identity."""
        digest = hashlib.sha256()
        for key, array in self.arrays().items():
            array = np.ascontiguousarray(array)
            digest.update(f"{key}:{array.dtype.str}:{array.shape};".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def original_units(self, y: np.ndarray) -> np.ndarray:
        """Regression targets or predictions with the standardization undone."""
        if self.target_scale is None:
            return y
        return y * self.target_scale["std"] + self.target_scale["mean"]


def _standardize(
    train: np.ndarray, test: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Scale with statistics of the training split only, so the test split does not leak."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std == 0, 1.0, std)
    return (train - mean) / std, (test - mean) / std, {"mean": mean, "std": std}


def _positional_split(x: np.ndarray, y: np.ndarray, task: Task, p: SyntheticParams) -> list:
    test = slice(0, p.n_test) if p.test_first else slice(len(x) - p.n_test, None)
    train = slice(p.n_test, None) if p.test_first else slice(0, len(x) - p.n_test)
    return [x[train], x[test], y[train], y[test]]


def _random_split(x: np.ndarray, y: np.ndarray, task: Task, p: RealParams) -> list:
    from sklearn.model_selection import train_test_split

    labels = None if task is Task.REGRESSION else y
    _check_split(len(x), labels, p.test_size, f"dataset '{p.name}'")
    return train_test_split(
        x, y, test_size=p.test_size, random_state=p.random_state, stratify=labels
    )


def _imbalanced(x: np.ndarray, y: np.ndarray, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """Keep a share ``p.imbalance`` (at least one row) of every class but the largest, rows
    drawn at random and left in their order."""
    if p.imbalance == 1:
        return x, y
    rng = np.random.default_rng([p.random_state, 1])
    counts = np.bincount(y)
    keep = np.ones(len(y), dtype=bool)
    for label in np.flatnonzero(counts):
        if label == counts.argmax():
            continue
        rows = np.flatnonzero(y == label)
        dropped = rng.choice(rows, len(rows) - max(1, round(p.imbalance * len(rows))), False)
        keep[dropped] = False
    return x[keep], y[keep]


def _corrupted(y: np.ndarray, task: Task, n_classes: int, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """Training targets with a share of rows corrupted, and the mask of those rows: labels
    replaced by another class drawn uniformly (symmetric noise), or regression targets shifted
    by OUTLIER_SHIFT standard deviations with a random sign."""
    share = p.outliers if task is Task.REGRESSION else p.label_noise
    rng = np.random.default_rng([p.random_state, 2])
    mask = np.zeros(len(y), dtype=bool)
    count = min(round(share * len(y)), len(y) - 1)  # a share below 1 leaves a row intact
    mask[rng.choice(len(y), count, replace=False)] = True
    y = y.copy()
    if task is Task.REGRESSION:
        sign = rng.choice([-1.0, 1.0], mask.sum())
        y[mask] += (sign * OUTLIER_SHIFT * y.std()).astype(y.dtype)
    else:
        y[mask] = (y[mask] + rng.integers(1, n_classes, mask.sum())) % n_classes
    return y, mask


def make_dataset(params: Any) -> Dataset:
    """Make, split and preprocess the dataset described by validated ``params``.

    Imbalance thins the training split before standardization (the data a user would have);
    label noise and outliers corrupt the targets the loss sees after it, so the scale, and the
    test metric's units, do not move with the level of corruption."""
    generator = GENERATORS[params.generator]
    x, y = generator.make(params)
    task = generator.task(params)
    classes: list[str] = []
    if task is Task.REGRESSION:
        y = y.astype("float32")
    else:
        labels, y = np.unique(y, return_inverse=True)
        classes = [str(label) for label in labels]
        y = y.astype("int64")
    split = _random_split if issubclass(generator.schema, RealParams) else _positional_split
    x_train, x_test, y_train, y_test = split(x.astype("float32"), y, task, params)
    if task is not Task.REGRESSION:
        x_train, y_train = _imbalanced(x_train, y_train, params)
    target_scale = None
    if params.standardize:
        x_train, x_test, _ = _standardize(x_train, x_test)
        if task is Task.REGRESSION:
            y_train, y_test, scale = _standardize(y_train, y_test)
            target_scale = {key: float(value) for key, value in scale.items()}
    y_train, corrupted = _corrupted(y_train, task, len(classes), params)
    return Dataset(
        x_train.astype("float32"),
        y_train,
        x_test.astype("float32"),
        y_test,
        task,
        classes,
        target_scale,
        corrupted,
    )
