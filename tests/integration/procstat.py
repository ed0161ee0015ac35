"""What a test reads of the proxy process from /proc: its open fds, and whether it runs under
AddressSanitizer (make asan), which changes what its memory figures mean."""

import os
import time


def sanitized(pid):
    """True when the proxy runs under AddressSanitizer (make asan): its allocator keeps freed
    memory in a quarantine (256 MiB by default) and maps shadow memory, so RSS measures ASan,
    not connectd. Memory bounds are then reported, not asserted (the release build asserts
    them), and CPU bounds are relaxed."""
    with open(f"/proc/{pid}/maps") as f:
        return "libasan" in f.read()


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_fds(pid, want, timeout=5.0):
    """Poll (bounded) until pid has at most want fds; returns the last count."""
    deadline = time.monotonic() + timeout
    while True:
        n = fd_count(pid)
        if n <= want or time.monotonic() > deadline:
            return n
        time.sleep(0.05)
