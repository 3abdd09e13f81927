"""One environment variable set for the duration of a block (the C++ dispatch reads fastconv's
kernel switches on every call), its previous value (or absence) restored after."""
from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def set_env(name: str, value: str):
    prev = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if prev is None:
            del os.environ[name]
        else:
            os.environ[name] = prev
