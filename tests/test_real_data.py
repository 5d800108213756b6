"""Real data: scikit-learn's bundled datasets and the user's CSV, through the same pipeline.

Splits and scaling are recomputed here from scikit-learn directly; every CSV is written by the
test that reads it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets
from mlflow.tracking import MlflowClient
from omegaconf import open_dict
from sklearn.model_selection import train_test_split

from losslab import app, losses
from losslab.app import CONF_DIR
from losslab.config import ConfigError, validate
from losslab.datasets import make_dataset
from losslab.losses import Task

# name: (rows, features, task, number of classes, a loss that fits)
BUNDLED = {
    "breast_cancer": (569, 30, Task.BINARY, 2, "bce"),
    "digits": (1797, 64, Task.MULTICLASS, 10, "cce"),
    "diabetes": (442, 10, Task.REGRESSION, 0, "mse"),
    "wine": (178, 13, Task.MULTICLASS, 3, "cce"),
    "iris": (150, 4, Task.MULTICLASS, 3, "sparse_cce"),
}
CLASSIFICATION = [name for name, spec in BUNDLED.items() if spec[2] is not Task.REGRESSION]
REFERENCE_PRESETS = [
    "blobs_cce",
    "blobs_kld",
    "blobs_sparse_cce",
    "circles_bce",
    "circles_hinge",
    "circles_squared_hinge",
    "reg_mae",
    "reg_mse",
    "reg_msle",
    "separable_hinge",
    "separable_squared_hinge",
]
# preset: (dataset, loss)
REAL_PRESETS = {
    **{
        f"real_binary_{loss}": ("breast_cancer", loss) for loss in ("bce", "hinge", "squared_hinge")
    },
    **{
        f"real_multiclass_{loss}": ("digits", loss)
        for loss in ("cce", "sparse_cce", "kld", "categorical_hinge")
    },
    **{
        f"real_regression_{loss}": ("diabetes", loss)
        for loss in ("mse", "mae", "huber", "log_cosh")
    },
}


def bundled_cfg(compose_raw, name: str, *overrides: str):
    return validate(compose_raw(f"dataset={name}", f"loss={BUNDLED[name][4]}", *overrides))


def raw_bundled(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32, as losslab stores them) and targets (class names) from scikit-learn."""
    if name == "diabetes":
        x, y = sklearn.datasets.load_diabetes(return_X_y=True, scaled=False)
        return x.astype("float32"), y.astype("float32")
    bunch = getattr(sklearn.datasets, f"load_{name}")()
    return bunch.data.astype("float32"), np.asarray(bunch.target_names)[bunch.target]


# --- bundled datasets -----------------------------------------------------------------------


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_shapes_split_and_classes(compose_raw, name):
    rows, n_features, task, n_classes, _ = BUNDLED[name]
    p = bundled_cfg(compose_raw, name).dataset
    data = make_dataset(p)
    n_test = math.ceil(p.test_size * rows)
    assert data.x_train.shape == (rows - n_test, n_features)
    assert data.x_test.shape == (n_test, n_features)
    assert data.y_train.shape == (rows - n_test,)
    assert data.y_test.shape == (n_test,)
    assert data.task is task
    assert data.n_classes == n_classes == len(data.classes)
    assert data.x_train.dtype == data.x_test.dtype == np.float32
    label_dtype = np.float32 if task is Task.REGRESSION else np.int64
    assert data.y_train.dtype == data.y_test.dtype == label_dtype
    if task is not Task.REGRESSION:
        assert set(np.unique(data.y_train)) == set(range(n_classes))


def test_bundled_class_names_are_the_mapping(compose_raw):
    data = make_dataset(bundled_cfg(compose_raw, "breast_cancer").dataset)
    assert data.classes == ["benign", "malignant"]
    _, y = raw_bundled("breast_cancer")
    # scikit-learn codes malignant as 0; sorted names make it class 1 (the positive class)
    assert int((data.y_train == 1).sum() + (data.y_test == 1).sum()) == int(
        (y == "malignant").sum()
    )
    assert make_dataset(bundled_cfg(compose_raw, "iris").dataset).classes == [
        "setosa",
        "versicolor",
        "virginica",
    ]


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_bundled_split_is_stratified(compose_raw, name):
    data = make_dataset(bundled_cfg(compose_raw, name).dataset)
    everything = np.concatenate([data.y_train, data.y_test])
    shares = np.bincount(everything) / len(everything)
    # every class's test count is its overall share of the test split, to within one row
    expected = shares * len(data.y_test)
    assert np.all(np.abs(np.bincount(data.y_test) - expected) <= 1)
    expected = shares * len(data.y_train)
    assert np.all(np.abs(np.bincount(data.y_train) - expected) <= 1)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_scaling_uses_train_statistics_only(compose_raw, name):
    p = bundled_cfg(compose_raw, name).dataset
    assert p.standardize
    data = make_dataset(p)
    x, y = raw_bundled(name)
    regression = BUNDLED[name][2] is Task.REGRESSION
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=p.test_size, random_state=p.random_state, stratify=None if regression else y
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    varying = std > 0  # digits has pixels that are always 0
    std = np.where(varying, std, 1.0)
    np.testing.assert_allclose(data.x_train, (x_train - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data.x_test, (x_test - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=0)[varying], 1.0, rtol=1e-4)
    own = (x_test - x_test.mean(axis=0)) / np.where(x_test.std(axis=0) > 0, x_test.std(axis=0), 1)
    assert not np.allclose(data.x_test, own, atol=1e-3)
    if regression:
        assert data.target_scale == pytest.approx({"mean": y_train.mean(), "std": y_train.std()})
        np.testing.assert_allclose(data.y_train.mean(), 0.0, atol=1e-5)
        np.testing.assert_allclose(data.y_train.std(), 1.0, rtol=1e-4)
        np.testing.assert_allclose(data.original_units(data.y_test), y_test, rtol=1e-5)
    else:
        assert data.target_scale is None
        np.testing.assert_array_equal(np.asarray(data.classes)[data.y_test], y_test.astype(str))


def test_unstandardized_diabetes_keeps_the_raw_values(compose_raw):
    p = bundled_cfg(compose_raw, "diabetes", "dataset.standardize=false").dataset
    data = make_dataset(p)
    x, y = raw_bundled("diabetes")
    x_train, _, y_train, _ = train_test_split(
        x, y, test_size=p.test_size, random_state=p.random_state
    )
    np.testing.assert_array_equal(data.x_train, x_train)  # ages in years, not pre-scaled
    np.testing.assert_array_equal(data.y_train, y_train)
    assert data.target_scale is None


@pytest.mark.parametrize("name", ["breast_cancer", "diabetes"])
def test_bundled_split_follows_random_state(compose_raw, name):
    first = make_dataset(bundled_cfg(compose_raw, name).dataset).content_hash()
    assert make_dataset(bundled_cfg(compose_raw, name).dataset).content_hash() == first
    other = bundled_cfg(compose_raw, name, "dataset.random_state=2").dataset
    assert make_dataset(other).content_hash() != first


# Overrides on a bundled dataset that must be refused, and what the message must contain.
BUNDLED_REFUSALS = {
    "unknown-loader": (
        ["dataset=iris", "dataset.loader=mnist"],
        ["dataset.loader", "mnist", "wine"],
    ),
    "test-size-zero": (["dataset=iris", "dataset.test_size=0"], ["dataset.test_size", "(0, 1)"]),
    "test-size-one": (["dataset=iris", "dataset.test_size=1"], ["dataset.test_size", "got 1"]),
    "hinge-on-digits": (["dataset=digits", "loss=hinge"], ["'hinge'", "'digits'", "cce"]),
    "bce-on-diabetes": (["dataset=diabetes", "loss=bce"], ["'bce'", "'diabetes'", "mse"]),
    "positional-key": (["dataset=wine", "+dataset.n_test=10"], ["dataset.n_test", "test_size"]),
}


@pytest.mark.parametrize(
    ("overrides", "expected"), BUNDLED_REFUSALS.values(), ids=list(BUNDLED_REFUSALS)
)
def test_bundled_refusals_name_the_problem(compose_raw, overrides, expected):
    with pytest.raises(ConfigError) as excinfo:
        validate(compose_raw("loss=cce", *overrides))
    for part in expected:
        assert part in str(excinfo.value)


def test_split_too_large_for_the_classes_is_refused(compose_raw):
    p = bundled_cfg(compose_raw, "iris", "dataset.test_size=0.99").dataset
    with pytest.raises(ConfigError, match=r"149 test and 1 train rows.*3 classes"):
        make_dataset(p)


# --- the user's CSV -------------------------------------------------------------------------


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def labelled_csv(path: Path, labels: list, n_features: int = 2) -> Path:
    """``row`` (the row number, to find a row after the shuffle), noise features, ``label``."""
    rng = np.random.default_rng(0)
    rows = [
        [i, *np.round(rng.normal(size=n_features - 1), 4), label] for i, label in enumerate(labels)
    ]
    header = ["row", *(f"f{j}" for j in range(1, n_features)), "label"]
    return write_csv(path, header, rows)


def csv_overrides(path: Path, *more: str, target: str = "label") -> list[str]:
    return ["dataset=csv", f"dataset.path='{path}'", f"dataset.target={target}", *more]


def csv_cfg(compose_raw, path: Path, *more: str, target: str = "label"):
    return validate(compose_raw(*csv_overrides(path, *more, target=target)))


# labels written to the file: (loss that fits, task, classes in index order)
LABEL_KINDS = {
    "text": (["yes", "no"] * 10, "bce", Task.BINARY, ["no", "yes"]),
    "zero-one": ([0, 1] * 10, "bce", Task.BINARY, ["0", "1"]),
    "plus-minus-one": ([-1, 1] * 10, "hinge", Task.BINARY, ["-1", "1"]),
    "one-to-k": ([1, 2, 3] * 7, "cce", Task.MULTICLASS, ["1", "2", "3"]),
    "text-multiclass": (["emu", "cat", "dog"] * 7, "cce", Task.MULTICLASS, ["cat", "dog", "emu"]),
}


@pytest.mark.parametrize(
    ("labels", "loss", "task", "classes"), LABEL_KINDS.values(), ids=list(LABEL_KINDS)
)
def test_csv_classes_are_inferred_and_mapped(compose_raw, tmp_path, labels, loss, task, classes):
    path = labelled_csv(tmp_path / "data.csv", labels)
    p = csv_cfg(compose_raw, path, f"loss={loss}", "dataset.standardize=false").dataset
    assert p.task is None
    data = make_dataset(p)
    assert data.task is task
    assert data.classes == classes
    assert len(data.x_train) + len(data.x_test) == len(labels)
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        written = [str(labels[int(row)]) for row in x[:, 0]]
        assert [data.classes[i] for i in y] == written


@pytest.mark.parametrize("kind", ["text", "zero-one", "plus-minus-one"])
def test_binary_labels_reach_each_loss_as_it_needs(compose_raw, tmp_path, kind):
    labels, _, _, classes = LABEL_KINDS[kind]
    path = labelled_csv(tmp_path / "data.csv", labels)
    data = make_dataset(csv_cfg(compose_raw, path, "dataset.standardize=false").dataset)
    written = np.array([str(labels[int(row)]) for row in data.x_train[:, 0]])
    positive = written == classes[1]  # the second label in sorted order
    bce = losses.encode_targets(losses.get("bce"), data.y_train, data.n_classes)
    hinge = losses.encode_targets(losses.get("hinge"), data.y_train, data.n_classes)
    np.testing.assert_array_equal(bce.reshape(-1), np.where(positive, 1.0, 0.0))
    np.testing.assert_array_equal(hinge.reshape(-1), np.where(positive, 1.0, -1.0))


@pytest.mark.parametrize("kind", ["one-to-k", "text-multiclass"])
def test_multiclass_labels_reach_each_loss_as_it_needs(compose_raw, tmp_path, kind):
    labels, _, _, classes = LABEL_KINDS[kind]
    path = labelled_csv(tmp_path / "data.csv", labels)
    p = csv_cfg(compose_raw, path, "loss=cce", "dataset.standardize=false").dataset
    data = make_dataset(p)
    written = [str(labels[int(row)]) for row in data.x_train[:, 0]]
    index = np.array([classes.index(label) for label in written])
    one_hot = losses.encode_targets(losses.get("cce"), data.y_train, data.n_classes)
    sparse = losses.encode_targets(losses.get("sparse_cce"), data.y_train, data.n_classes)
    np.testing.assert_array_equal(one_hot, np.eye(len(classes))[index])
    np.testing.assert_array_equal(sparse, index)


def test_csv_float_target_is_regression(compose_raw, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    y = x @ [1.0, -2.0, 0.5] + 100.0
    path = write_csv(tmp_path / "reg.csv", ["a", "b", "c", "y"], np.column_stack([x, y]).tolist())
    data = make_dataset(csv_cfg(compose_raw, path, "loss=mse", target="y").dataset)
    assert data.task is Task.REGRESSION
    assert data.classes == []
    assert data.target_scale["mean"] == pytest.approx(100.0, abs=1.0)
    np.testing.assert_allclose(data.y_train.mean(), 0.0, atol=1e-5)
    restored = np.sort(
        np.concatenate([data.original_units(data.y_train), data.original_units(data.y_test)])
    )
    np.testing.assert_allclose(restored, np.sort(y), rtol=1e-5)


def test_csv_task_can_be_set(compose_raw, tmp_path):
    path = labelled_csv(tmp_path / "data.csv", [1, 2, 3] * 7)
    as_numbers = make_dataset(
        csv_cfg(compose_raw, path, "loss=mse", "dataset.task=regression").dataset
    )
    assert as_numbers.task is Task.REGRESSION
    two = labelled_csv(tmp_path / "two.csv", [0.0, 1.0] * 10)  # floats: inferred as regression
    assert make_dataset(csv_cfg(compose_raw, two, "loss=mse").dataset).task is Task.REGRESSION
    as_classes = make_dataset(csv_cfg(compose_raw, two, "loss=bce", "dataset.task=binary").dataset)
    assert as_classes.task is Task.BINARY
    assert as_classes.classes == ["0.0", "1.0"]


def test_csv_hinge_on_multiclass_names_loss_dataset_and_allowed(compose_raw, tmp_path):
    path = labelled_csv(tmp_path / "data.csv", ["a", "b", "c"] * 5)
    with pytest.raises(ConfigError) as excinfo:
        csv_cfg(compose_raw, path, "loss=hinge", "dataset.name=mine")
    message = str(excinfo.value)
    for part in ("'hinge'", "'mine'", "multiclass", "cce, sparse_cce, kld, categorical_hinge"):
        assert part in message


# Bad files: (the file's text, more overrides, parts the message must contain)
BAD_FILES = {
    "missing-target-column": (
        "a,b,y\n1,2,0\n3,4,1\n",
        [],
        ["dataset.target", "'label'", "columns: a, b, y"],
    ),
    "non-numeric-features": (
        "a,color,b,size,label\n" + "1,red,2,big,0\n3,blue,4,small,1\n" * 4,
        [],
        ["non-numeric feature columns: color, size"],
    ),
    "empty-file": ("", [], ["is empty"]),
    "malformed": ("a,label\n1,0\n2,1,5,6\n", [], ["not a readable CSV", "line 3"]),
    "header-only": ("a,b,label\n", [], ["no rows"]),
    "nan-values": (
        "a,b,label\n1,2,0\n3,,1\n5,6,\n7,8,1\n,,0\n",
        [],
        ["4 NaN values", "data rows 2, 3, 5", "columns a, b, label"],
    ),
    "single-class": ("a,b,label\n" + "1,2,x\n" * 6, [], ["single class ('x')", "at least two"]),
    "too-few-rows": (
        "a,label\n" + "".join(f"{i},{'abc'[i % 3]}\n" for i in range(8)),
        ["loss=cce"],
        ["dataset.test_size", "8 rows", "2 test and 6 train rows", "3 classes"],
    ),
    "regression-without-train-rows": (
        "a,label\n1,0.5\n",
        ["loss=mse"],
        ["dataset.test_size", "1 rows", "no train rows"],
    ),
    "class-with-one-row": (
        "a,label\n" + "1,x\n2,y\n" * 4 + "3,z\n",
        ["loss=cce"],
        ["class 'z' has only 1 row", "at least 2 of every class"],
    ),
    "no-features": ("label\n" + "0\n1\n" * 4, [], ["no feature columns", "'label'"]),
    "unknown-task": (
        "a,label\n" + "1,0\n2,1\n" * 4,
        ["dataset.task=ordinal"],
        ["dataset.task", "'ordinal'", "regression, binary, multiclass"],
    ),
    "binary-with-three-classes": (
        "a,label\n" + "1,x\n2,y\n3,z\n" * 4,
        ["dataset.task=binary"],
        ["dataset.task", "binary needs 2 classes", "has 3 (x, y, z)", "multiclass"],
    ),
    "regression-on-text": (
        "a,label\n" + "1,2\n2,x\n" * 4,
        ["dataset.task=regression", "loss=mse"],
        ["regression needs a numeric target", "'x'"],
    ),
}


@pytest.mark.parametrize(("text", "more", "expected"), BAD_FILES.values(), ids=list(BAD_FILES))
def test_bad_csv_is_refused_at_validation(compose_raw, tmp_path, text, more, expected):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as excinfo:
        csv_cfg(compose_raw, path, *more)
    message = str(excinfo.value)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_missing_csv_file_is_refused(compose_raw, tmp_path):
    path = tmp_path / "absent.csv"
    with pytest.raises(ConfigError, match=r"dataset\.path: .*absent\.csv does not exist"):
        csv_cfg(compose_raw, path)


@pytest.mark.parametrize(("missing", "given"), [("path", "dataset.target=y"), ("target", None)])
def test_csv_path_and_target_are_required(compose_raw, tmp_path, missing, given):
    overrides = ["dataset=csv", given or f"dataset.path='{tmp_path / 'x.csv'}'"]
    with pytest.raises(ConfigError, match=rf"dataset\.{missing}: missing a value"):
        validate(compose_raw(*overrides))


# --- end to end -----------------------------------------------------------------------------


def run_app(compose_raw, tracking_uri: str, out: Path, *overrides: str) -> dict:
    raw = compose_raw(*overrides)
    with open_dict(raw):
        raw.trainer.epochs = 2
        raw.trainer.verbose = 0
        raw.tracking.uri = tracking_uri
    return app.run(raw, out)


def test_csv_end_to_end(compose_raw, tracking_uri, tmp_path):
    path = labelled_csv(tmp_path / "animals.csv", ["emu", "cat", "dog"] * 20, n_features=4)
    out = tmp_path / "out"
    results = run_app(
        compose_raw,
        tracking_uri,
        out,
        *csv_overrides(path, "loss=sparse_cce", "dataset.name=animals"),
    )
    assert set(results["test"]) == {"loss", "accuracy", "ece"}
    assert 0.0 <= results["test"]["accuracy"] <= 1.0
    meta = json.loads((out / "data" / "dataset.json").read_text())
    assert meta["classes"] == ["cat", "dog", "emu"]
    assert meta["task"] == "multiclass"
    assert meta["n_train"] + meta["n_test"] == 60
    assert meta["params"]["path"] == str(path)
    plots = {p.name for p in (out / "plots").iterdir()}
    assert plots == {
        "learning_curves.png",
        "dataset.png",
        "confusion_matrix.png",
        "reliability.png",
    }

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("losslab").experiment_id])
    assert run.data.params["dataset.path"] == str(path)
    logged = client.download_artifacts(run.info.run_id, "data/dataset.json", str(tmp_path))
    assert json.loads(Path(logged).read_text())["classes"] == ["cat", "dog", "emu"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} >= {
        "plots/confusion_matrix.png"
    }


def test_breast_cancer_end_to_end(compose_raw, tracking_uri, tmp_path):
    out = tmp_path / "out"
    results = run_app(compose_raw, tracking_uri, out, "experiment=real_binary_hinge")
    assert 0.0 <= results["test"]["accuracy"] <= 1.0
    assert (out / "plots" / "confusion_matrix.png").is_file()
    assert not (out / "plots" / "decision_boundary.png").exists()
    assert json.loads((out / "data" / "dataset.json").read_text())["classes"] == [
        "benign",
        "malignant",
    ]


def test_diabetes_end_to_end_reports_original_units(compose_raw, tracking_uri, tmp_path):
    out = tmp_path / "out"
    results = run_app(compose_raw, tracking_uri, out, "experiment=real_regression_mse")
    std = json.loads((out / "data" / "dataset.json").read_text())["target_scale"]["std"]
    assert std > 10  # disease progression scores, tens to hundreds
    for split in ("train", "test"):
        scores = results[split]
        assert scores["mse_original"] == pytest.approx(scores["mse"] * std**2, rel=1e-3)
        assert 0 < scores["mae_original"] <= math.sqrt(scores["mse_original"]) + 1e-6
    assert json.loads((out / "metrics.json").read_text())["test"] == results["test"]
    assert (out / "plots" / "predicted_vs_true.png").is_file()


# --- presets and studies --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), REAL_PRESETS.items(), ids=list(REAL_PRESETS))
def test_real_preset_composes(compose_raw, name, expected):
    cfg = validate(compose_raw(f"experiment={name}"))
    assert (cfg.dataset.name, cfg.loss.name) == expected
    assert cfg.preset == name
    assert cfg.optimizer.name == "sgd"
    assert cfg.optimizer.learning_rate == pytest.approx(0.01)
    assert cfg.optimizer.momentum == pytest.approx(0.9)


def _study_presets(study: str) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    value = OmegaConf.load(CONF_DIR / "study" / f"{study}.yaml").hydra.sweeper.params.experiment
    glob = OverridesParser.create().parse_override(f"experiment={value}").value()
    return glob.filter(sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))


def test_seeds_study_keeps_the_reference_presets():
    assert _study_presets("seeds") == REFERENCE_PRESETS


def test_real_study_runs_every_real_preset():
    assert _study_presets("real") == sorted(REAL_PRESETS)
