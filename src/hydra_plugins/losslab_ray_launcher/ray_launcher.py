"""``hydra/launcher=ray``: hydra-ray-launcher, checked before it starts.

The plugin waits forever when no cluster answers at ``address``, and prints a traceback when
Ray is not installed or the cluster refuses the client; this launcher reports each in one line.
A Ray started for one sweep (no address) listens on loopback only, where Ray would otherwise
use the machine's network address. Ray workers start in the directory of ``ray start``, so
the sweep directory is made absolute here, where the sweep was started.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

INSTALL_HINT = "pip install -r requirements-ray.lock"


class LaunchError(CompactHydraException):
    """A sweep that cannot start; Hydra prints the message alone and exits 1."""


def host_port(address: str) -> tuple[str, int] | None:
    """``HOST:PORT`` split, or None for Ray's other forms (``auto``, ``ray://...``)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in address:
        return None
    return host.strip("[]"), int(port)


def connect(init: DictConfig) -> None:
    """Join the cluster at ``address``, or start a Ray here without one, as the plugin would;
    a cluster that does not answer or refuses this client is one line."""
    address = init.get("address") or os.environ.get("RAY_ADDRESS")
    target = host_port(address) if address else None
    if target is not None:
        try:
            socket.create_connection(target, timeout=5).close()
        except OSError as error:
            raise LaunchError(
                f"losslab: error: hydra.launcher.ray.init.address: no Ray cluster answers at "
                f"{address} ({error.strerror or type(error).__name__}); start one with "
                "`ray start --head`, or leave the address out to run on a local Ray"
            ) from None
    if not address:  # read when Ray is imported: a Ray for this sweep alone, on loopback
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    try:
        ray.init(**OmegaConf.to_container(init, resolve=True))
    except ConnectionError:
        raise LaunchError(
            f"losslab: error: hydra.launcher.ray.init.address: the Ray cluster at {address} "
            "did not accept this client; if it uses token authentication, set "
            "RAY_AUTH_MODE=token with its token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
        ) from None


def absolute_sweep_dir(config: DictConfig) -> None:
    """Make ``hydra.sweep.dir`` absolute for the sweep and, as a Hydra override that every
    job's config is composed with, for the jobs."""
    sweep_dir = os.path.abspath(config.hydra.sweep.dir)
    quoted = sweep_dir.replace("\\", "\\\\").replace("'", "\\'")
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.sweep.dir = sweep_dir
        config.hydra.overrides.hydra.append(f"hydra.sweep.dir='{quoted}'")


class RayLauncher(Launcher):
    """Delegates to hydra-ray-launcher's launcher with the same ``ray`` config."""

    def __init__(self, ray: DictConfig) -> None:
        self.ray = ray
        self.setup_args: dict = {}

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.setup_args = {
            "hydra_context": hydra_context,
            "task_function": task_function,
            "config": config,
        }

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        try:
            from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher as Plugin
        except ImportError:
            raise LaunchError(
                f"losslab: error: hydra/launcher=ray needs Ray, which is not installed: "
                f"{INSTALL_HINT}"
            ) from None
        connect(self.ray.init)
        absolute_sweep_dir(self.setup_args["config"])
        plugin = Plugin(ray=self.ray)  # finds Ray connected and uses it
        plugin.setup(**self.setup_args)
        return plugin.launch(job_overrides, initial_job_idx)
