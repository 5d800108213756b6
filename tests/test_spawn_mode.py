"""The run of the tests marked `spawn` under the spawn start method (make test, with
LOSSLAB_START_METHOD=spawn and tests/spawn on PYTHONPATH) does run them under spawn: in the test
process and in any Python it starts. In the ordinary run the first holds trivially and the
second skips."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.spawn


def _expected() -> str:
    return os.environ.get("LOSSLAB_START_METHOD", multiprocessing.get_start_method())


def test_the_start_method_is_the_one_asked_for() -> None:
    assert multiprocessing.get_start_method(allow_none=False) == _expected()


def test_a_python_started_from_a_test_has_it_too() -> None:
    expected = os.environ.get("LOSSLAB_START_METHOD")
    if expected is None:
        pytest.skip("for the run under a forced start method (LOSSLAB_START_METHOD)")
    child = subprocess.run(
        [sys.executable, "-c", "import multiprocessing; print(multiprocessing.get_start_method())"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # a fresh interpreter has the platform's default unless sitecustomize sets it
    assert child.stdout.strip() == expected
