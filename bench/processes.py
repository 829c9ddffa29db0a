"""Processes, temporary directories and PostgreSQL databases the benchmark starts (all
undone on exit), and what it reads of processes from /proc."""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse

from common import RESERVED_PORTS, BenchTimeout, log


LIVE = []  # Popen objects, each the leader of its own process group
TEMP_DIRS = []
PG_DATABASES = []  # (admin url, database name)
_cleaned = False


def spawn(cmd, log_path, env=None, cwd=None):
    """Starts `cmd` in its own process group, output to `log_path`. With setpriv, the
    child also gets SIGTERM if the driver dies without cleaning up (e.g. SIGKILL)."""
    if shutil.which("setpriv"):
        cmd = ["setpriv", "--pdeathsig", "TERM", "--"] + list(cmd)
    with open(log_path, "ab") as out:
        p = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )
    LIVE.append(p)
    return p


def stop_process(p, grace=20.0):
    """SIGTERM to the process group, SIGKILL after `grace` seconds; then makes sure
    nothing of the group is left (prefork children)."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(10)
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    if p in LIVE:
        LIVE.remove(p)


def psql(admin_url, sql, db=None):
    url = admin_url
    if db:
        u = urllib.parse.urlsplit(admin_url)
        url = urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + db, u.query, u.fragment))
    out = subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql],
        capture_output=True, text=True, timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"psql failed ({sql!r}): {out.stderr.strip()}")
    return out.stdout.strip()


def create_database(admin_url):
    name = "ferry_bench_" + secrets.token_hex(6)
    psql(admin_url, f"CREATE DATABASE {name}")
    PG_DATABASES.append((admin_url, name))
    u = urllib.parse.urlsplit(admin_url)
    return name, urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))


def drop_database(admin_url, name):
    try:
        psql(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        log(f"warning: could not drop database {name}: {e}")
    if (admin_url, name) in PG_DATABASES:
        PG_DATABASES.remove((admin_url, name))


def cleanup():
    global _cleaned
    if _cleaned:
        return
    _cleaned = True
    for p in reversed(list(LIVE)):
        try:
            stop_process(p, grace=10)
        except Exception:  # noqa: BLE001
            pass
    for admin, name in list(PG_DATABASES):
        drop_database(admin, name)
    for d in TEMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def free_port():
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in RESERVED_PORTS:
            return port


def proc_kb(path, key):
    """The `key:` line of a /proc file, in KiB; 0 if the process is gone."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid):
    """Proportional set size now (shared pages split between their users), in KiB."""
    return proc_kb(f"/proc/{pid}/smaps_rollup", "Pss")


def vm_hwm_kb(pid):
    """Peak resident set size (VmHWM) of a process, in KiB; 0 if it is gone."""
    return proc_kb(f"/proc/{pid}/status", "VmHWM")


def vm_rss_kb(pid):
    """Resident set size now (VmRSS) of a process, in KiB; 0 if it is gone."""
    return proc_kb(f"/proc/{pid}/status", "VmRSS")


def descendants(pid):
    """Every process below `pid` (children, grandchildren...)."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                parent_of[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [pid]
    while frontier:
        cur = frontier.pop()
        kids = [c for c, p in parent_of.items() if p == cur]
        found += kids
        frontier += kids
    return found


def leaf_pid(p):
    """The real server process under a `setpriv` wrapper (setpriv execs, so it is p.pid)."""
    return p.pid


def wait_for_line(p, log_path, needle, timeout, what):
    """Waits until a line of `p`'s output (in `log_path`) contains `needle`, and returns
    it: how a process that announces itself on stdout says it is up. Raises if `p` exits
    first or the line is not there within `timeout` seconds."""
    deadline = time.time() + timeout
    while True:
        try:
            with open(log_path, errors="replace") as f:
                line = next((x for x in f if needle in x), None)
        except OSError:
            line = None
        if line is not None:
            return line.strip()
        if p.poll() is not None:
            raise RuntimeError(f"{what} exited with {p.returncode}:\n{tail(log_path)}")
        if time.time() > deadline:
            raise BenchTimeout(f"{what} not up within {timeout:.0f} s")
        time.sleep(0.02)


def tail(path, n=20):
    try:
        with open(path, "rb") as f:
            return b"".join(f.readlines()[-n:]).decode(errors="replace")
    except OSError:
        return ""
