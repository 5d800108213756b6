"""``losslab-doctor``: find what killed processes left behind.

A process killed with SIGKILL cannot end its MLflow run, which then stays RUNNING for ever.
Every losslab run records the pid and host that hold it; a RUNNING run whose process is gone
(on this host) is marked FAILED. DVC's view of stale or missing stage outputs is shown too.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
from typing import Any

import psutil


def _alive(pid: int) -> bool:
    """A zombie counts as gone: it holds no run any more, and where nothing reaps orphans (a
    container whose first process does not) a killed process stays one for ever."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # exists, owned by someone else
        return True


def process_gone(run: Any) -> bool | None:
    """Whether the process that holds a run is gone; None when that cannot be told from here
    (no pid recorded, or another host)."""
    pid, host = run.data.tags.get("losslab.pid"), run.data.tags.get("losslab.host")
    if pid is None or host != socket.gethostname():
        return None
    return not _alive(int(pid))


def orphaned(client: Any) -> tuple[list[Any], list[Any]]:
    """RUNNING runs whose process is dead here, and those that cannot be checked from here."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    running = client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'")
    dead, unknown = [], []
    for run in running:
        gone = process_gone(run)
        if gone is None:
            unknown.append(run)
        elif gone:
            dead.append(run)
    return dead, unknown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="losslab-doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="report only, change nothing")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else mlflow.db")
    args = parser.parse_args(argv)

    from mlflow.tracking import MlflowClient

    from losslab.cli import reported_errors
    from losslab.tracking import PROJECT_ROOT, client_uri, masked_uri, resolve_uri

    with reported_errors("losslab-doctor"):
        uri = resolve_uri(args.tracking_uri)
        client = MlflowClient(client_uri(uri))
        dead, unknown = orphaned(client)
        print(f"losslab-doctor: store {masked_uri(uri)}")
        for run in dead:
            pid = run.data.tags["losslab.pid"]
            action = "would mark" if args.dry_run else "marked"
            if not args.dry_run:
                client.set_tag(run.info.run_id, "losslab.error", f"process {pid} died (doctor)")
                client.set_terminated(run.info.run_id, "FAILED")
            print(
                f"  {action} FAILED: run {run.info.run_id} ({run.info.run_name}), pid {pid} is gone"
            )
        for run in unknown:
            host = run.data.tags.get("losslab.host", "an unknown host")
            print(f"  RUNNING on {host}, not checked: run {run.info.run_id} ({run.info.run_name})")
        if not dead and not unknown:
            print("  no run left RUNNING")
        if (PROJECT_ROOT / "dvc.yaml").is_file():
            status = subprocess.run(
                ["dvc", "status"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
            )
            print("losslab-doctor: dvc status")
            print("  " + (status.stdout.strip() or status.stderr.strip()).replace("\n", "\n  "))


if __name__ == "__main__":
    main()
