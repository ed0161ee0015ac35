"""Client processes for the real-client tests (test_clients.py, test_tls_clients.py): run one
bounded, with its output captured and no *_proxy variable in its environment unless the test
sets one on purpose, and describe how it ended when it failed."""

import os
import shutil
import subprocess

import pytest

RUN_TIMEOUT = 60  # seconds for any one client process
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")


def clean_env(**extra):
    """os.environ without any proxy variable (any case), plus extra."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
    env.update(extra)
    return env


def need(tool):
    """The path of tool, or skip the test (the install-deps script names every tool used)."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/install-deps test installs it)")
    return path


def run(args, timeout=RUN_TIMEOUT, env=None, **kw):
    """subprocess.run, bounded, output captured, no proxy variables unless env says so."""
    return subprocess.run(args, capture_output=True, timeout=timeout,
                          env=env if env is not None else clean_env(), **kw)


def describe(r):
    """A failed run's exit status and the tails of its output, for an assertion message."""
    return (f"exit {r.returncode}\n--- stdout ---\n{r.stdout[-3000:]!r}\n"
            f"--- stderr ---\n{r.stderr.decode(errors='replace')[-3000:]}")
