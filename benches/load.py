#!/usr/bin/env python3
"""End-to-end load benchmarks: natterd + natter-bench, medians of several runs.

Usage: python3 benches/load.py [--runs 3] [--duration 5] [CASE ...]
Builds nothing: run `cargo build --release` first (NATTERD_BIN=path measures another
natterd build with the same cases). Every run starts a fresh natterd
(its own temporary directory, data dir and credentials) on 127.0.0.1 port 0, runs one
natter-bench scenario against it with --server-pid, and stops it. Prints one markdown
row per case with the median of each reported number. Cases (default: all but churn):

  ceiling          the in-process relay, N=1000 W=32 (the yardstick)
  direct           N=1000 W=32, --fsync always (the default)
  direct-everysec  same, --fsync everysec
  direct-no        same, --fsync no
  direct-memory    same, --in-memory
  offline-*        the same four, every message stored for an offline user
  light            N=100 W=1, each client paced at 10 msg/s (latency at light load)
  light-everysec   the same with --fsync everysec
  light-memory     the same with --in-memory
  closed-w1        N=100 W=1, each client sending as fast as replies return
  broadcast        N=1000, 8 senders, W=32
  broadcast-light  N=1000, 4 senders, W=8
  login-storm      N=10000
  idle             N=19000 idle clients for 10 s
  idle-9000        N=9000 idle clients for 10 s
  startup          natterd with the bundled 7 users, nobody connected: its RSS (and
                   private memory) a second after start, and after a first client
  churn            50 clients connecting, messaging and leaving for 5 minutes
"""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATTERD = os.environ.get("NATTERD_BIN") or os.path.join(ROOT, "target", "release", "natterd")
BENCH = os.path.join(ROOT, "target", "release", "natter-bench")

FSYNC = {"": [], "-everysec": ["--fsync", "everysec"], "-no": ["--fsync", "no"], "-memory": ["--in-memory"]}

def cases(duration):
    d = ["-d", str(duration)]
    out = {"ceiling": (None, ["ceiling", "-n", "1000", "-w", "32", *d])}
    for suffix, flags in FSYNC.items():
        out["direct" + suffix] = (flags, ["direct", "-n", "1000", "-w", "32", *d])
        out["offline" + (suffix or "-always")] = (flags, ["direct", "--offline", "-n", "1000", "-w", "32", *d])
    out["light"] = ([], ["direct", "-n", "100", "-w", "1", "--rate", "10", *d])
    out["light-everysec"] = (["--fsync", "everysec"], ["direct", "-n", "100", "-w", "1", "--rate", "10", *d])
    out["light-memory"] = (["--in-memory"], ["direct", "-n", "100", "-w", "1", "--rate", "10", *d])
    out["closed-w1"] = ([], ["direct", "-n", "100", "-w", "1", *d])
    out["broadcast"] = ([], ["broadcast", "-n", "1000", "-k", "8", "-w", "32", *d])
    out["broadcast-light"] = ([], ["broadcast", "-n", "1000", "-k", "4", "-w", "8", *d])
    out["login-storm"] = ([], ["login-storm", "-n", "10000", "--setup-timeout", "120s"])
    out["idle"] = ([], ["idle", "-n", "19000", "-d", "10", "--setup-timeout", "180s"])
    out["idle-9000"] = ([], ["idle", "-n", "9000", "-d", "10", "--setup-timeout", "120s"])
    out["startup"] = ("startup", None)
    out["churn"] = ([], ["churn", "-n", "50", "-d", "300"])
    return out


def rss_kib(pid, field="Rss"):
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def startup_once():
    """natterd on its defaults (bundled credentials, a journal): memory at rest."""
    import socket, time
    tmp = tempfile.mkdtemp(prefix="natter-start-")
    try:
        shutil.copy(os.path.join(ROOT, "credentials.txt"), tmp)
        server = subprocess.Popen([NATTERD, "0", "--bind", "127.0.0.1"], cwd=tmp,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        port = int(server.stdout.readline().strip().rsplit(":", 1)[-1])
        try:
            time.sleep(1)
            out = {"rss_at_start_kib": rss_kib(server.pid),
                   "anon_at_start_kib": rss_kib(server.pid, "Anonymous")}
            with socket.create_connection(("127.0.0.1", port)) as c:
                c.sendall(b"HELLO 1\nLOGIN hans falcon*solo\nLOGOUT\n")
                while c.recv(4096):
                    pass
            time.sleep(1)
            out["rss_after_first_client_kib"] = rss_kib(server.pid)
            out["anon_after_first_client_kib"] = rss_kib(server.pid, "Anonymous")
            return out
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_once(server_flags, bench_args):
    if server_flags == "startup":
        return startup_once()
    if server_flags is None:
        res = subprocess.run([BENCH, *bench_args, "--json"], capture_output=True, text=True, check=True)
        return json.loads(res.stdout)
    tmp = tempfile.mkdtemp(prefix="natter-load-")
    try:
        creds = os.path.join(tmp, "credentials.txt")
        subprocess.run([BENCH, "gen-credentials", "20000", "-o", creds], check=True)
        server = subprocess.Popen(
            [NATTERD, "0", "--bind", "127.0.0.1", "--credentials", creds, *server_flags],
            cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = server.stdout.readline()
        addr = line.strip().rsplit(" ", 1)[-1]
        try:
            res = subprocess.run(
                [BENCH, *bench_args, "--server", addr, "--server-pid", str(server.pid), "--json"],
                capture_output=True, text=True, check=True)
            return json.loads(res.stdout)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    args = sys.argv[1:]
    runs, duration = 3, 5
    while args and args[0].startswith("--"):
        flag, value = args[0], args[1]
        args = args[2:]
        if flag == "--runs":
            runs = int(value)
        elif flag == "--duration":
            duration = int(value)
    table = cases(duration)
    names = args or [c for c in table if c != "churn"]
    for name in names:
        server_flags, bench_args = table[name]
        reports = [run_once(server_flags, bench_args) for _ in range(runs)]
        med = {}
        for key, value in reports[0].items():
            if isinstance(value, (int, float)):
                med[key] = statistics.median(r[key] for r in reports)
            else:
                med[key] = "/".join(sorted({str(r[key]) for r in reports}))
        print(json.dumps({"case": name, "runs": runs, **med}), flush=True)


if __name__ == "__main__":
    main()
