"""bench/benchlib.py: what bench.py, metrics.py and chain.py share (stdlib only).

Child processes (only those a script started are ever signalled, by pid), loopback port checks,
CPU accounting (how busy the machine was with work that is not ours), the quiet-machine wait,
the figures' statistics and formatting, the loadgen result checks, and building connectd and
the bench tools. What logs takes the calling script's log function, so that each keeps its own
prefix.
"""
import ctypes
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FD_LIMIT = 20000  # asked for only when the hard limit is unlimited


def env(name, default):
    return os.environ.get(name, default)


# ---- child processes ---------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _child_setup():
    """Raise the open-file limit to the hard limit (FD_LIMIT when that is unlimited) and ask for
    SIGTERM if the parent dies (best effort: a daemon that changes user loses it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else FD_LIMIT
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Started:
    """The processes this script started: only these are ever signalled, by pid. `grace`: how
    long stop() waits after the signal before SIGKILL, unless told otherwise."""

    def __init__(self, grace=8.0):
        self.procs = {}
        self.grace = grace

    def start(self, name, argv, stderr_path, **kw):
        err = open(stderr_path, "ab")
        p = subprocess.Popen(argv, stdin=kw.pop("stdin", subprocess.DEVNULL),
                             stdout=kw.pop("stdout", err), stderr=err, preexec_fn=_child_setup,
                             close_fds=True, **kw)
        err.close()
        self.procs[name] = p
        return p

    def stop(self, name, grace=None, sig=signal.SIGTERM):
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return p
        p.send_signal(sig)
        try:
            p.wait(timeout=self.grace if grace is None else grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
        return p

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)

    def cpu_s(self):
        """CPU seconds of the running processes started here, with their descendants."""
        return sum(proc_cpu_s(pid) for p in self.procs.values() if p.poll() is None
                   for pid in proc_tree(p.pid))


def port_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()



def refuse_busy_ports_and_trap_sigterm(ports, tmp, name):
    """The start of a measuring run: exit (tmp removed) when one of its loopback ports is in
    use, and make SIGTERM end the run as Ctrl-C does (the caller's finally cleans up). Returns
    the list SIGTERM appends its signal number to."""
    busy = [p for p in ports if not port_free(p)]
    if busy:
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(f"{name}: loopback ports {busy} are in use; use --port-base")
    stop_req = []

    def on_term(sig, frame):
        stop_req.append(sig)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    return stop_req


def add_connectd_args(ap, commit_env):
    """--connectd-bin [CONNECTD_BIN] and --connectd-commit [commit_env]: the connectd a run
    measures instead of `make` in the work tree."""
    ap.add_argument("--connectd-bin", default=env("CONNECTD_BIN", ""),
                    help="benchmark this binary instead of running make [CONNECTD_BIN]")
    ap.add_argument("--connectd-commit", default=env(commit_env, ""),
                    help="benchmark a clean build of this commit (e.g. HEAD), made in a "
                         f"temporary git worktree, instead of running make [{commit_env}]")

def wait_port(port, proc, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# ---- CPU accounting: how busy was the machine with work that is not ours? ---------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_s():
    """CPU seconds the whole machine spent in user, nice, system, irq and softirq (not idle,
    iowait, steal). The kernel here charges softirq work done in a process's context to that
    process too, so ours minus this is close to 0 on a quiet machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK


def proc_tree(pid):
    out, i = [pid], 0
    while i < len(out):
        try:
            for tid in os.listdir(f"/proc/{out[i]}/task"):
                with open(f"/proc/{out[i]}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
        except OSError:
            pass
        i += 1
    return out


def proc_cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        return (int(v[11]) + int(v[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def self_and_children_cpu_s():
    """This process (its threads, its HTTP clients) and its waited-for children."""
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def wait_quiet(limit_cores, max_wait, log):
    """Wait (at most max_wait s) until the machine's work stays under limit_cores for 3 s; then
    go on regardless, saying so (through log). Returns the last measured load, in cores."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0 = machine_busy_s(), time.monotonic()
        time.sleep(3)
        busy = (machine_busy_s() - b0) / (time.monotonic() - t0)
        if busy <= limit_cores:
            return busy
        if time.monotonic() >= deadline:
            log(f"the machine is busy with other work ({busy:.2f} cores); going on anyway")
            return busy
        log(f"the machine is busy with other work ({busy:.2f} cores); waiting for it to calm")


# ---- loadgen runs ------------------------------------------------------------------------------

def retry_noisy(run_once, retries, limit, notes, log, who, width, figure, rep):
    """run_once() again (up to `retries` times) while other work on the machine took more than
    `limit` cores during it; a result still that noisy is noted. Returns the last result."""
    for attempt in range(retries + 1):
        res = run_once()
        if res is None or res["other_load_cores"] <= limit:
            break
        if attempt < retries:
            log(f"{who:{width}s} #{rep}: other work took {res['other_load_cores']:.2f} cores; "
                "running it again")
    if res is not None and res["other_load_cores"] > limit:
        notes.append(f"{who} {figure} #{rep}: the machine was busy with other work "
                     f"({res['other_load_cores']:.2f} cores on average)")
    return res


def loadgen_json(r, notes, label):
    """The JSON line loadgen printed last (r: its subprocess.run result), or None, noted."""
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        notes.append(f"{label}: no result (rc={r.returncode}): {r.stderr.strip()[-200:]}")
        return None


def loadgen_checked(r, res, notes, label):
    """res, noted when loadgen failed or counted errors; None when it failed."""
    if r.returncode != 0 or res.get("errors"):
        notes.append(f"{label}: rc={r.returncode} errors={res.get('errors')} "
                     f"first_error={res.get('first_error')!r}")
        return None if r.returncode != 0 else res
    return res


# ---- statistics and formatting -----------------------------------------------------------------

def med(vals):
    return statistics.median(vals) if vals else None


def fmt(v, digits=None):
    if v is None:
        return "-"
    if digits is not None:
        return f"{v:.{digits}f}"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def cell(vals):
    if not vals:
        return "-"
    if len(vals) == 1:
        return fmt(vals[0])
    return f"{fmt(med(vals))} ({fmt(min(vals))}-{fmt(max(vals))})"


def md_table(heads, rows):
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def verdict(ok):
    return "MET" if ok else "MISSED"


# ---- the command line (the options metrics.py and chain.py share) -----------------------------

def add_window_args(ap):
    ap.add_argument("--seconds", type=float, default=float(env("BENCH_SECONDS", 5)),
                    help="measured window of each loadgen run [BENCH_SECONDS]")
    ap.add_argument("--warmup", type=float, default=float(env("BENCH_WARMUP", 1)),
                    help="warm-up before the window [BENCH_WARMUP]")
    ap.add_argument("--concurrency", type=int, default=int(env("HANDSHAKE_CONCURRENCY", 64)),
                    help="handshakes in flight [HANDSHAKE_CONCURRENCY]")


def add_noise_args(ap):
    ap.add_argument("--other-load", type=float, default=float(env("BENCH_OTHER_LOAD", 0.25)),
                    help="cores of other work that make a run noisy [BENCH_OTHER_LOAD]")
    ap.add_argument("--noisy-retries", type=int, default=int(env("BENCH_NOISY_RETRIES", 1)),
                    help="reruns of a noisy loadgen run [BENCH_NOISY_RETRIES]")
    ap.add_argument("--quiet-wait", type=float, default=float(env("BENCH_QUIET_WAIT", 120)),
                    help="seconds to wait for a quiet machine before each part "
                         "[BENCH_QUIET_WAIT]")


# ---- building ----------------------------------------------------------------------------------

BENCH_CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE"]
# loadgen --tls (OpenSSL; Debian libssl-dev) and --h2 (libnghttp2; Debian libnghttp2-dev)
BENCH_LIBS = {"loadgen": ["-lssl", "-lcrypto", "-lnghttp2"]}


def build_tools(bin_dir, log, beside=None):
    """As bench/run: target and loadgen into build/bench, when missing or older than the source.
    With beside (a tag), each is built beside and renamed into place, so that a run using the
    old binary is not disturbed."""
    os.makedirs(bin_dir, exist_ok=True)
    cc = os.environ.get("CC", "gcc")
    for tool in ("target", "loadgen"):
        out, src = os.path.join(bin_dir, tool), os.path.join(ROOT, "bench", f"{tool}.c")
        if not os.path.exists(out) or os.path.getmtime(src) > os.path.getmtime(out):
            log(f"building build/bench/{tool}")
            if beside is None:
                subprocess.run([cc] + BENCH_CFLAGS + ["-pthread", "-o", out, src] +
                               BENCH_LIBS.get(tool, []), check=True)
                continue
            tmp_out = f"{out}.{beside}-{os.getpid()}"
            try:
                subprocess.run([cc] + BENCH_CFLAGS + ["-pthread", "-o", tmp_out, src] +
                               BENCH_LIBS.get(tool, []), check=True)
                os.replace(tmp_out, out)
            finally:
                if os.path.exists(tmp_out):
                    os.unlink(tmp_out)


def build_commit(commit, tmp, tag, log):
    """The binary of `commit`, built in a temporary worktree (removed again). None on failure."""
    wt = os.path.join(tmp, f"{tag}-worktree")
    out = os.path.join(tmp, f"connectd-{tag}")
    try:
        r = subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", wt, commit],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            log(f"{tag}: git worktree add {commit} failed: {r.stderr.strip()[-300:]}")
            return None, None
        log(f"{tag}: building {commit} in {wt}")
        r = subprocess.run(["make", "-s", "-j2", "-C", wt, "all"], capture_output=True,
                           text=True, timeout=900)
        if r.returncode != 0 or not os.path.exists(os.path.join(wt, "connectd")):
            log(f"{tag}: make failed: {(r.stdout + r.stderr).strip()[-500:]}")
            return None, None
        shutil.copy2(os.path.join(wt, "connectd"), out)
        desc = subprocess.run(["git", "-C", wt, "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True).stdout.strip()
        return out, desc
    except (OSError, subprocess.TimeoutExpired) as e:
        log(f"{tag}: {e}")
        return None, None
    finally:
        if os.path.exists(wt) or os.path.exists(os.path.join(ROOT, ".git", "worktrees",
                                                             f"{tag}-worktree")):
            r = subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", wt],
                               capture_output=True, text=True)
            if r.returncode != 0:
                log(f"{tag}: git worktree remove {wt}: {r.stderr.strip()}")
            shutil.rmtree(wt, ignore_errors=True)


def connectd_binary(given, commit, tmp, prefix, log):
    """(binary, how it came): `given` as is; else a clean build of `commit` in a temporary
    worktree; else `make` in the work tree. On failure: removes tmp and exits, "PREFIX: ..."."""
    if given:
        return given, "given"
    if commit:
        binary, desc = build_commit(commit, tmp, "head", log)
        if not binary:
            shutil.rmtree(tmp, ignore_errors=True)
            sys.exit(f"{prefix}: could not build {commit}")
        return binary, f"clean build of {desc}"
    log("building connectd (make)")
    r = subprocess.run(["make", "-s", "-C", ROOT, "all"])
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(f"{prefix}: make failed (the work tree may be mid-edit: "
                 "--connectd-commit HEAD builds a clean copy of HEAD instead)")
    return os.path.join(ROOT, "connectd"), "make in the work tree"


# ---- describing the run ------------------------------------------------------------------------

def cmd_out(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def repo_state():
    """(the short commit of HEAD, the files under src/ and include/ modified in the work tree)."""
    commit = cmd_out(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no",
                            "src", "include"], capture_output=True, text=True).stdout.split("\n")
    return commit, [d.strip() for d in dirty if d.strip()]


def cpu_model():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                         "?")
    except OSError:
        pass
    return model
