"""Atomic, deterministic files: a stage either writes a complete output or leaves the old one.

Every writer goes through :func:`atomic_path` (write beside the target, then rename), and the
arrays and models are written as zips with fixed timestamps, so the same data or weights have the
same bytes (and so the same DVC hash) on every machine and at every run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

_EPOCH_1980 = (1980, 1, 1, 0, 0, 0)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class StageInputError(ValueError):
    """A stage input that is missing or unreadable; the message names the file and the fix."""


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs follow the umask like any file
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | os.PathLike, data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StageInputError(f"{path}: missing; run the stage that writes it first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StageInputError(f"{path}: not valid JSON ({error}); rerun its stage") from None


def write_history_csv(target: str | os.PathLike, history: dict[str, list[float]]) -> None:
    """Per-epoch history: ``epoch`` (from 1), ``loss``, metrics, then their ``val_`` twins."""
    train = sorted((k for k in history if not k.startswith("val_")), key=lambda k: k != "loss")
    columns = ["epoch", *train, *[f"val_{k}" for k in train if f"val_{k}" in history]]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for epoch in range(len(history["loss"])):
        writer.writerow([epoch + 1, *(repr(history[c][epoch]) for c in columns[1:])])
    write_text(target, buffer.getvalue())


def read_history_csv(path: str | os.PathLike) -> dict[str, list[float]]:
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        return {key: [float(row[key]) for row in rows] for key in rows[0] if key != "epoch"}
    except FileNotFoundError:
        raise StageInputError(f"{path}: missing; run the train stage first") from None
    except (IndexError, KeyError, ValueError, csv.Error) as error:
        raise StageInputError(f"{path}: not a history CSV ({error}); rerun train") from None


def write_npz(target: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` but byte-for-byte reproducible (fixed timestamps, sorted, no pickles)."""
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(
                buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False
            )
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", _EPOCH_1980), buffer.getvalue())


def write_keras(model: Any, target: str | os.PathLike) -> None:
    """``model.save`` without what changes from save to save: the zip's timestamps, the
    ``date_saved`` in its metadata, and the ``shared_object_id`` numbers in its config (Python's
    ``id()`` of each shared object, renumbered here in order of appearance)."""
    with tempfile.TemporaryDirectory() as folder:
        saved = Path(folder) / "model.keras"
        model.save(saved)
        with (
            zipfile.ZipFile(saved) as source,
            atomic_path(target) as tmp,
            zipfile.ZipFile(tmp, "w") as archive,
        ):
            for entry in source.infolist():
                data = source.read(entry)
                if entry.filename == "metadata.json":
                    metadata = json.loads(data)
                    metadata.pop("date_saved", None)
                    data = json.dumps(metadata).encode()
                elif entry.filename == "config.json":
                    data = json.dumps(_renumber_shared_objects(json.loads(data), {})).encode()
                info = zipfile.ZipInfo(entry.filename, _EPOCH_1980)
                archive.writestr(info, data, compress_type=entry.compress_type)


def _renumber_shared_objects(node: Any, numbers: dict[int, int]) -> Any:
    if isinstance(node, list):
        return [_renumber_shared_objects(item, numbers) for item in node]
    if not isinstance(node, dict):
        return node
    renumbered = {key: _renumber_shared_objects(value, numbers) for key, value in node.items()}
    if "shared_object_id" in node:
        renumbered["shared_object_id"] = numbers.setdefault(node["shared_object_id"], len(numbers))
    return renumbered


def file_md5(path: str | os.PathLike) -> str:
    """The file's MD5, as DVC hashes it."""
    path = Path(path)
    try:
        return hashlib.md5(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise StageInputError(f"{path}: missing; run the stage that writes it first") from None


def read_npz(path: str | os.PathLike, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in names}
    except FileNotFoundError:
        raise StageInputError(f"{path}: missing; run the generate stage first") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise StageInputError(
            f"{path}: not a complete dataset archive ({error}); rerun generate"
        ) from None
