"""The pinned sets install on every platform the project supports, from one lock.

requirements.lock, and requirements-ray.lock on top of it, are resolved once for Python 3.11 on
Linux x86-64, macOS arm64 and Windows x86-64 (`make lock`). For each platform, uv works out
what installing a lock there would install, without installing anything: every pin must have a
wheel for that platform, the set must be complete (nothing outside the lock is pulled in), and
TensorFlow comes as tensorflow-cpu on Linux and Windows and as tensorflow on macOS. uv reads the
package index; with its cache warm, each platform takes a second or two.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
BASE_LOCK = ROOT / "requirements.lock"
RAY_LOCK = ROOT / "requirements-ray.lock"
# the extras that requirements.lock holds besides the dependencies; requirements-ray.lock adds ray
BASE_EXTRAS = ("dev", "postgres")

# pure Python and published as a source distribution only; every other pin must have a wheel
SOURCE_ONLY = ("antlr4-python3-runtime",)


def _marker_env(sys_platform: str, machine: str, system: str, os_name: str) -> dict[str, str]:
    return {
        "sys_platform": sys_platform,
        "platform_machine": machine,
        "platform_system": system,
        "os_name": os_name,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "python_version": "3.11",
        "python_full_version": "3.11.0",
        "platform_release": "",
        "platform_version": "",
        "implementation_version": "3.11.0",
    }


# uv's name for each supported platform: its environment markers, and the TensorFlow it gets
LINUX_X86_64 = _marker_env("linux", "x86_64", "Linux", "posix")
MACOS_ARM64 = _marker_env("darwin", "arm64", "Darwin", "posix")
WINDOWS_X86_64 = _marker_env("win32", "AMD64", "Windows", "nt")
PLATFORMS = {
    "x86_64-unknown-linux-gnu": (LINUX_X86_64, "tensorflow-cpu"),
    "aarch64-apple-darwin": (MACOS_ARM64, "tensorflow"),
    "x86_64-pc-windows-msvc": (WINDOWS_X86_64, "tensorflow-cpu"),
}
# where tensorflow-cpu has no wheel besides macOS: the markers hand it tensorflow as well
LINUX_AARCH64 = _marker_env("linux", "aarch64", "Linux", "posix")


def _uv() -> str:
    """The uv of the dev extra, beside this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / ("uv.exe" if os.name == "nt" else "uv")
    found = str(beside) if beside.is_file() else shutil.which("uv")
    if found is None:
        pytest.fail(
            f"uv is missing: neither beside {sys.executable} nor on PATH. It is in the dev "
            "extra: pip install -r requirements.lock"
        )
    return found


def _read_lock(path: Path) -> list[Requirement]:
    """The pins of a lock file, those of the files it includes with -r first."""
    pins: list[Requirement] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r"):
            pins += _read_lock(path.parent / line[2:].strip())
            continue
        assert not line.startswith("-"), f"{path.name}: an option in a lock: {raw!r}"
        pin = Requirement(line)
        assert len(pin.specifier) == 1 and next(iter(pin.specifier)).operator == "==", (
            f"{path.name}: not an exact pin: {raw!r}"
        )
        pins.append(pin)
    return pins


def _version(pin: Requirement) -> str:
    return next(iter(pin.specifier)).version


def _expected(path: Path, env: dict[str, str]) -> dict[str, str]:
    """name → version of the pins of a lock that apply on the platform of ``env``."""
    expected: dict[str, str] = {}
    for pin in _read_lock(path):
        if pin.marker is None or pin.marker.evaluate(env):
            name = canonicalize_name(pin.name)
            assert expected.get(name, _version(pin)) == _version(pin), (
                f"{path.name} pins {name} twice, at {expected[name]} and {_version(pin)}"
            )
            expected[name] = _version(pin)
    return expected


def _would_install(lock: Path, platform: str, target: Path) -> dict[str, str]:
    """name → version of what installing ``lock`` on ``platform`` would install, wheels only
    (but SOURCE_ONLY), as uv resolves it against the package index; nothing is installed."""
    command = [
        _uv(), "pip", "install", "--dry-run", "--no-progress",
        "--python", sys.executable, "--target", str(target),
        "--python-platform", platform, "--python-version", "3.11",
        "--only-binary", ":all:", *(f"--no-binary={name}" for name in SOURCE_ONLY),
        "-r", str(lock),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"{lock.name} does not install on {platform}:\n{output[-4000:]}")
    found = re.findall(r"^ \+ (\S+)==(\S+)$", output, flags=re.MULTILINE)
    assert found, f"uv named nothing that it would install:\n{output[-4000:]}"
    return {canonicalize_name(name): version for name, version in found}


@pytest.mark.parametrize("lock", [BASE_LOCK, RAY_LOCK], ids=lambda path: path.name)
@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_the_lock_installs_on_each_platform(lock: Path, platform: str, tmp_path: Path) -> None:
    env, tensorflow = PLATFORMS[platform]
    would = _would_install(lock, platform, tmp_path / "target")
    expected = _expected(lock, env)

    assert would == expected, (
        f"installing {lock.name} on {platform} would differ from its pins: "
        f"not pinned {sorted(would.keys() - expected.keys())}, "
        f"pinned but left out {sorted(expected.keys() - would.keys())}, "
        "other versions "
        f"{sorted(n for n in would.keys() & expected.keys() if would[n] != expected[n])}"
    )
    other = {"tensorflow": "tensorflow-cpu", "tensorflow-cpu": "tensorflow"}[tensorflow]
    assert tensorflow in would and other not in would, (
        f"on {platform} the lock should bring {tensorflow} alone: "
        f"{ {name: would[name] for name in ('tensorflow', 'tensorflow-cpu') if name in would} }"
    )


def _pyproject_pins(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    pins = [Requirement(line) for line in lines]
    for pin in pins:
        assert len(pin.specifier) == 1 and next(iter(pin.specifier)).operator == "==", (
            f"pyproject.toml: {pin} is not pinned exactly"
        )
    return pins


@pytest.mark.parametrize(
    ("lock", "extras"),
    [(BASE_LOCK, BASE_EXTRAS), (RAY_LOCK, (*BASE_EXTRAS, "ray"))],
    ids=["requirements.lock", "requirements-ray.lock"],
)
def test_the_lock_pins_what_pyproject_pins(lock: Path, extras: tuple[str, ...]) -> None:
    """Each pin of pyproject.toml is in the lock at the same version, on the same platforms."""
    envs = {name: env for name, (env, _) in PLATFORMS.items()} | {"linux-aarch64": LINUX_AARCH64}
    locked = _read_lock(lock)
    for pin in _pyproject_pins(*extras):
        name = canonicalize_name(pin.name)
        same = [entry for entry in locked if canonicalize_name(entry.name) == name]
        assert same, f"pyproject.toml pins {pin}, {lock.name} has no {name}: run make lock"
        for entry in same:
            assert _version(entry) == _version(pin), (
                f"pyproject.toml pins {name}=={_version(pin)}, {lock.name} {_version(entry)}: "
                "run make lock"
            )
        for platform, env in envs.items():
            wanted = pin.marker is None or pin.marker.evaluate(env)
            has = any(entry.marker is None or entry.marker.evaluate(env) for entry in same)
            assert wanted == has, (
                f"on {platform}, pyproject.toml {'wants' if wanted else 'does not want'} "
                f"{name}, {lock.name} {'has' if has else 'has not'} it: run make lock"
            )


def test_the_ray_lock_keeps_the_base_pins() -> None:
    """requirements-ray.lock adds to requirements.lock and changes none of its pins (pip would
    refuse two versions of one package)."""
    base = {canonicalize_name(pin.name): _version(pin) for pin in _read_lock(BASE_LOCK)}
    text = RAY_LOCK.read_text(encoding="utf-8")
    assert re.search(r"^-r requirements\.lock$", text, flags=re.MULTILINE)
    for pin in _read_lock(RAY_LOCK):
        name = canonicalize_name(pin.name)
        assert base.get(name, _version(pin)) == _version(pin), (
            f"requirements-ray.lock pins {name}=={_version(pin)}, requirements.lock {base[name]}"
        )


def test_tensorflow_on_linux_aarch64_is_tensorflow() -> None:
    """tensorflow-cpu has no wheel for Linux aarch64 either: the markers send it to tensorflow."""
    wanted = _expected(BASE_LOCK, LINUX_AARCH64)
    assert "tensorflow" in wanted and "tensorflow-cpu" not in wanted


@pytest.mark.parametrize("lock", [BASE_LOCK, RAY_LOCK], ids=lambda path: path.name)
def test_the_lock_names_no_index(lock: Path) -> None:
    """A lock installs from whichever index pip or uv is set up with: it names none."""
    text = lock.read_text(encoding="utf-8")
    assert "://" not in text
    assert not re.search(r"^\s*--?(index-url|extra-index-url|find-links|[if]) ", text, re.M)
