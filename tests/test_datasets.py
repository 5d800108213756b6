"""Dataset generation, splits and preprocessing; deterministic storage of arrays and histories."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import numpy as np
import pytest
from sklearn.datasets import make_blobs, make_circles, make_regression

from losslab.config import validate
from losslab.datasets import make_dataset
from losslab.losses import Task
from losslab.storage import (
    StageInputError,
    read_history_csv,
    read_json,
    read_npz,
    write_history_csv,
    write_npz,
)

DATASETS = ["regression", "circles_noisy", "blobs", "circles_separable"]
# A loss that fits each dataset, so the config validates.
FITTING_LOSS = {
    "regression": "mse",
    "circles_noisy": "bce",
    "blobs": "cce",
    "circles_separable": "hinge",
}
# dataset: (task, n_classes)
KINDS = {
    "regression": (Task.REGRESSION, 0),
    "circles_noisy": (Task.BINARY, 2),
    "blobs": (Task.MULTICLASS, 3),
    "circles_separable": (Task.BINARY, 2),
}


def _pick(name: str) -> tuple[str, str]:
    return f"dataset={name}", f"loss={FITTING_LOSS[name]}"


def _sklearn_raw(p) -> tuple[np.ndarray, np.ndarray]:
    """The dataset straight from scikit-learn, with the config's arguments."""
    if p.generator == "regression":
        return make_regression(
            n_samples=p.n_samples,
            n_features=p.n_features,
            noise=p.noise,
            random_state=p.random_state,
        )
    if p.generator == "circles":
        return make_circles(
            n_samples=p.n_samples, noise=p.noise, factor=p.factor, random_state=p.random_state
        )
    return make_blobs(
        n_samples=p.n_samples,
        centers=p.centers,
        n_features=p.n_features,
        cluster_std=p.cluster_std,
        random_state=p.random_state,
    )


@pytest.mark.parametrize("name", DATASETS)
def test_shapes_and_dtypes(tiny_cfg, name):
    cfg = tiny_cfg(*_pick(name))
    p = cfg.dataset
    data = make_dataset(p)
    n_features = 2 if p.generator == "circles" else p.n_features
    n_train = p.n_samples - p.n_test
    assert data.x_train.shape == (n_train, n_features)
    assert data.x_test.shape == (p.n_test, n_features)
    assert data.y_train.shape == (n_train,)
    assert data.y_test.shape == (p.n_test,)
    assert data.n_features == n_features
    assert data.x_train.dtype == np.float32
    assert data.x_test.dtype == np.float32
    task, n_classes = KINDS[name]
    assert data.task is task
    assert data.n_classes == n_classes
    label_dtype = np.float32 if task is Task.REGRESSION else np.int64
    assert data.y_train.dtype == label_dtype
    assert data.y_test.dtype == label_dtype


@pytest.mark.parametrize("name", ["regression", "circles_noisy", "blobs"])
def test_test_split_is_the_tail(compose_raw, name):
    cfg = validate(compose_raw(*_pick(name), "dataset.standardize=false"))
    p = cfg.dataset
    assert not p.test_first
    x, y = _sklearn_raw(p)
    cut = p.n_samples - p.n_test
    data = make_dataset(p)
    np.testing.assert_array_equal(data.x_train, x[:cut].astype("float32"))
    np.testing.assert_array_equal(data.x_test, x[cut:].astype("float32"))
    np.testing.assert_array_equal(data.y_train, y[:cut].astype(data.y_train.dtype))
    np.testing.assert_array_equal(data.y_test, y[cut:].astype(data.y_test.dtype))


def test_separable_circles_test_split_is_the_head(compose_raw):
    cfg = validate(compose_raw("experiment=separable_hinge"))
    p = cfg.dataset
    assert p.test_first
    x, y = make_circles(
        n_samples=p.n_samples, noise=p.noise, factor=p.factor, random_state=p.random_state
    )
    data = make_dataset(p)
    assert len(data.x_test) == p.n_test == 250
    np.testing.assert_array_equal(data.x_test, x[: p.n_test].astype("float32"))
    np.testing.assert_array_equal(data.y_test, y[: p.n_test])
    np.testing.assert_array_equal(data.x_train, x[p.n_test :].astype("float32"))
    np.testing.assert_array_equal(data.y_train, y[p.n_test :])


@pytest.mark.parametrize(("name", "n_classes"), [("blobs", 3), ("circles_noisy", 2)])
def test_class_labels_are_0_to_k_minus_1(tiny_cfg, name, n_classes):
    data = make_dataset(tiny_cfg(*_pick(name)).dataset)
    assert data.n_classes == n_classes
    assert set(np.unique(data.y_train)) == set(range(n_classes))
    assert set(np.unique(data.y_test)) == set(range(n_classes))


def test_regression_standardization_uses_train_statistics(tiny_cfg):
    p = tiny_cfg(*_pick("regression")).dataset
    assert p.standardize
    data = make_dataset(p)
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1.0, rtol=1e-4)
    assert abs(float(data.y_train.mean())) < 1e-5
    assert float(data.y_train.std()) == pytest.approx(1.0, rel=1e-4)

    x, y = _sklearn_raw(p)
    x, y = x.astype("float32"), y.astype("float32")
    cut = p.n_samples - p.n_test
    x_mean, x_std = x[:cut].mean(axis=0), x[:cut].std(axis=0)
    y_mean, y_std = y[:cut].mean(), y[:cut].std()
    np.testing.assert_allclose(data.x_train, (x[:cut] - x_mean) / x_std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.x_test, (x[cut:] - x_mean) / x_std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.y_train, (y[:cut] - y_mean) / y_std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.y_test, (y[cut:] - y_mean) / y_std, rtol=1e-5, atol=1e-6)
    # The test split was not scaled with its own statistics.
    own = (x[cut:] - x[cut:].mean(axis=0)) / x[cut:].std(axis=0)
    assert not np.allclose(data.x_test, own, atol=1e-3)


def test_unstandardized_data_is_left_as_generated(tiny_cfg):
    p = tiny_cfg(*_pick("circles_noisy")).dataset
    assert not p.standardize
    x, _ = _sklearn_raw(p)
    data = make_dataset(p)
    np.testing.assert_array_equal(data.x_train, x[: p.n_samples - p.n_test].astype("float32"))


@pytest.mark.parametrize("name", DATASETS)
def test_content_hash_is_stable_and_follows_the_seed(compose_raw, name):
    p = validate(compose_raw(*_pick(name), "dataset.n_samples=200", "dataset.n_test=50"))
    first = make_dataset(p.dataset).content_hash()
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert make_dataset(p.dataset).content_hash() == first
    other_seed = p.dataset.random_state + 1
    q = validate(
        compose_raw(
            *_pick(name),
            "dataset.n_samples=200",
            "dataset.n_test=50",
            f"dataset.random_state={other_seed}",
        )
    )
    assert make_dataset(q.dataset).content_hash() != first


# --- storage --------------------------------------------------------------------------------


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.normal(size=(7, 3)).astype("float32"),
        "y_train": np.array([0, 1, 2, 1, 0, 2, 1], dtype="int64"),
        "x_test": rng.normal(size=(2, 3)).astype("float32"),
        "y_test": np.array([0.5, -1.5], dtype="float32"),
    }


def test_write_npz_is_byte_identical(tmp_path, monkeypatch):
    arrays = _arrays()
    first, second = tmp_path / "a" / "data.npz", tmp_path / "b" / "data.npz"
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)
    write_npz(first, arrays)
    # A day later, with the arrays given in another order: still the same bytes.
    monkeypatch.setattr(time, "time", lambda: now + 86_400)
    write_npz(second, dict(reversed(list(arrays.items()))))
    assert first.read_bytes() == second.read_bytes()


def test_read_npz_round_trip(tmp_path):
    arrays = _arrays()
    path = tmp_path / "data.npz"
    write_npz(path, arrays)
    loaded = read_npz(path, tuple(arrays))
    assert sorted(loaded) == sorted(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded[name], array)


def test_write_npz_leaves_no_temporary_files(tmp_path):
    write_npz(tmp_path / "data.npz", _arrays())
    assert [p.name for p in tmp_path.iterdir()] == ["data.npz"]


def test_read_npz_truncated_file(tmp_path):
    path = tmp_path / "data.npz"
    write_npz(path, _arrays())
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(StageInputError, match=re.escape(str(path))):
        read_npz(path, ("x_train",))


def test_read_npz_missing_file(tmp_path):
    path = tmp_path / "absent.npz"
    with pytest.raises(StageInputError, match=re.escape(str(path))):
        read_npz(path, ("x_train",))


def test_read_npz_missing_array(tmp_path):
    path = tmp_path / "data.npz"
    write_npz(path, {"x_train": np.zeros(2)})
    with pytest.raises(StageInputError, match=re.escape(str(path))):
        read_npz(path, ("x_train", "y_train"))


def test_read_json_invalid(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"run_id": ')
    with pytest.raises(StageInputError) as excinfo:
        read_json(path)
    assert str(path) in str(excinfo.value)
    assert "JSON" in str(excinfo.value)


def test_history_csv_round_trip(tmp_path):
    history = {
        "val_accuracy": [0.5, 0.625, 0.75],
        "accuracy": [0.4, 0.6, 1 / 3],
        "val_loss": [0.9, 0.8, 0.7],
        "loss": [1.0, 0.1 + 0.2, 2.5e-7],
    }
    path = tmp_path / "history.csv"
    write_history_csv(path, history)
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    assert header[0] == "epoch"
    assert header[1] == "loss"
    assert sorted(header[1:]) == sorted(history)
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3"]
    loaded = read_history_csv(path)
    assert list(loaded)[0] == "loss"
    assert loaded == history  # exact: floats survive the CSV unchanged


def test_dataset_figure_is_drawn_once_per_data_and_copied_after(tiny_cfg, tmp_path):
    from losslab import plots

    blobs = make_dataset(tiny_cfg("experiment=blobs_cce").dataset)
    circles = make_dataset(tiny_cfg("experiment=circles_bce").dataset)
    drawn = plots.dataset_scatter(blobs, "data", tmp_path / "first" / "dataset.png")
    copied = plots.dataset_scatter(blobs, "data", tmp_path / "second" / "dataset.png")
    other = plots.dataset_scatter(circles, "data", tmp_path / "third" / "dataset.png")
    assert drawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert copied.read_bytes() == drawn.read_bytes()
    assert other.read_bytes() != drawn.read_bytes()


WRITE_MODEL = """
import sys, keras
from losslab import losses
from losslab.metrics import build_metrics
from losslab.storage import write_keras
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="hinge", metrics=build_metrics(losses.get("hinge")))
write_keras(model, sys.argv[1])
"""


def test_write_keras_gives_the_same_bytes_in_every_process(tmp_path):
    """What DVC hashes: the same weights, saved by two processes at two moments."""
    from losslab.training import load_model

    paths = [tmp_path / f"{name}.keras" for name in "ab"]
    for path in paths:
        done = subprocess.run(
            [sys.executable, "-c", WRITE_MODEL, str(path)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert load_model(paths[0]).count_params() == 17
