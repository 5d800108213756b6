"""What a run prints: a few lines off a terminal, one line redrawn on one, no TensorFlow start-up
logging unless the user asks for it (TF_CPP_MIN_LOG_LEVEL), and the epoch lines each
``trainer.verbose`` promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import pytest
from conftest import run_env
from omegaconf import DictConfig, read_write

from losslab import datasets, training

BIN = Path(sys.executable).parent
LOSSLAB = str(BIN / "losslab")
SMALL = ("experiment=reg_mse", "trainer.epochs=20", "dataset.n_samples=200", "dataset.n_test=100")
TF_LINE = re.compile(r"^[IWEF]\d{4} |absl")  # TensorFlow's C++ logging, and Abseil's note on it


def user_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """A user's shell: a fresh store in ``tmp_path``, TensorFlow's settings only if given (the
    test process has losslab's defaults in its environment)."""
    environment = run_env(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS"):
        environment.pop(name, None)
    return {**environment, **env}


def python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def epoch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Epoch ")]


# --------------------------------------------------------------------------------------------
# The losslab command, as a user runs it
# --------------------------------------------------------------------------------------------


def test_a_run_off_a_terminal_prints_at_most_15_lines(tmp_path: Path) -> None:
    """Into a fresh store (MLflow creates its tables), a regression (its evaluation predicts):
    a line at every tenth of the epochs, the outputs and the scores, nothing else."""
    done = subprocess.run(
        [LOSSLAB, *SMALL, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env=user_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout
    assert len(lines) <= 15, done.stdout
    assert not [line for line in lines if TF_LINE.search(line)], done.stdout
    assert not [line for line in lines if " INFO " in line], done.stdout  # MLflow's own
    shown = [line.split(" - ")[0] for line in epoch_lines(done.stdout)]
    assert shown == [f"Epoch {k}/20" for k in range(2, 21, 2)], done.stdout
    assert epoch_lines(done.stdout)[-1].endswith(" left") is False
    assert lines[-3].startswith("losslab: outputs in ")


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal (os.openpty)")
def test_on_a_terminal_progress_redraws_one_line(tmp_path: Path) -> None:
    controller, terminal = os.openpty()
    proc = subprocess.Popen(
        [LOSSLAB, *SMALL, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env=user_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=subprocess.PIPE,
    )
    os.close(terminal)
    shown = b""
    try:
        while chunk := os.read(controller, 4096):
            shown += chunk
    except OSError:  # Linux: the terminal's last writer has closed it
        pass
    finally:
        os.close(controller)
    stderr = proc.communicate(timeout=300)[1].decode()
    text = shown.decode()
    assert proc.returncode == 0, text + stderr
    assert not [line for line in stderr.splitlines() if TF_LINE.search(line)], stderr
    first, last = text.index("Epoch 1/20"), text.index("Epoch 20/20")
    assert text.count("\rEpoch ") == 20, repr(text)
    assert "\n" not in text[first:last], repr(text)  # redrawn in place, never a new line
    assert text[last:].index("\n") < text[last:].index("losslab: outputs in "), repr(text)


# --------------------------------------------------------------------------------------------
# TensorFlow's logging
# --------------------------------------------------------------------------------------------


def test_a_tensorflow_log_level_the_user_set_is_kept(tmp_path: Path) -> None:
    show = "import os, losslab; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    assert python(show, user_env(tmp_path)).stdout.strip() == "2"  # losslab's default
    chosen = "import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '0'; " + show
    assert python(chosen, user_env(tmp_path)).stdout.strip() == "0"
    assert python(show, user_env(tmp_path, TF_CPP_MIN_LOG_LEVEL="1")).stdout.strip() == "1"


def test_importing_tensorflow_after_losslab_writes_nothing(tmp_path: Path) -> None:
    done = python("import losslab, tensorflow", user_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_onednn_choice_the_user_made_is_kept(tmp_path: Path) -> None:
    show = "import os, losslab; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    assert python(show, user_env(tmp_path)).stdout.strip() == "0"  # losslab's default
    assert python(show, user_env(tmp_path, TF_ENABLE_ONEDNN_OPTS="1")).stdout.strip() == "1"


# --------------------------------------------------------------------------------------------
# trainer.verbose, in the training loop itself
# --------------------------------------------------------------------------------------------


def speaking(cfg: DictConfig, verbose: int) -> DictConfig:
    """``cfg`` (a tiny config: it trains silently) with ``trainer.verbose`` set."""
    with read_write(cfg):
        cfg.trainer.verbose = verbose
    return cfg


@pytest.mark.parametrize(
    ("verbose", "epochs", "expected"),
    [
        (0, 12, []),
        (1, 25, [3, 6, 9, 12, 15, 18, 21, 24, 25]),  # every tenth, and the last
        (1, 7, [1, 2, 3, 4, 5, 6, 7]),
        (2, 12, list(range(1, 13))),
    ],
)
def test_epoch_lines_as_verbose_says(tiny_cfg, capsys, verbose, epochs, expected) -> None:
    cfg = speaking(tiny_cfg("experiment=reg_mse", epochs=epochs), verbose)
    training.fit(cfg, datasets.make_dataset(cfg.dataset))
    out = capsys.readouterr().out
    assert [line.split(" - ")[0] for line in epoch_lines(out)] == [
        f"Epoch {k}/{epochs}" for k in expected
    ]
    assert out.splitlines() == epoch_lines(out)  # nothing else while training
    if expected:
        assert re.fullmatch(
            rf"Epoch {epochs}/{epochs} - loss: \S+ - val_loss: \S+ - took \d+:\d\d",
            epoch_lines(out)[-1],
        )


def test_training_stopped_early_shows_the_epoch_it_stopped_at(tiny_cfg, capsys) -> None:
    cfg = speaking(tiny_cfg("experiment=reg_mse", epochs=25), 1)

    class StopAtTwelve(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.model.stop_training = epoch + 1 >= 12

    training.fit(cfg, datasets.make_dataset(cfg.dataset), [StopAtTwelve()])
    lines = epoch_lines(capsys.readouterr().out)
    stopped = training.EPOCHS_PER_CALL * 2  # stopping acts at the end of a compiled call
    assert lines[-1].startswith(f"Epoch {stopped}/25 - ") and " took " in lines[-1], lines
