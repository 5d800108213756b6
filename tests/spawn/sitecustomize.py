"""Imported by every Python process started with this folder on PYTHONPATH (make test's second
pytest call, its xdist workers and every Python they start): multiprocessing's start method is
spawn there, as it is by default on macOS and Windows."""

import multiprocessing

multiprocessing.set_start_method("spawn", force=True)
