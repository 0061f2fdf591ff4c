#!/usr/bin/env python3
"""A genuine login's latency while an attacker floods password guesses (issue 12).

Starts natterd (the binary given, or target/release/natterd) with argon2-hashed
accounts, then for each run on a fresh server:
  - burst "closed": 512 guesses for vader from 16 loopback addresses (127.0.0.2-17),
    each connection sending HELLO + LOGIN and closing at once;
  - burst "open": 150 guesses for vader from 127.0.0.2 on connections that stay open;
and right after each burst measures how long a genuine login to another account
(yoda, from 127.0.0.1) takes from LOGIN to +WELCOME. Prints medians over the runs, interleaving the
binaries given, so two builds are compared in one run:

    python3 benches/verify_attack.py --runs 5 OLD/natterd target/release/natterd
"""
import argparse, os, socket, statistics, subprocess, sys, tempfile, threading, time

def hash_pw(natterd, pw):
    out = subprocess.run([natterd, "hash-password"], input=pw + "\n", capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()

def start(natterd, creds):
    d = tempfile.mkdtemp(prefix="natter-verify-")
    path = os.path.join(d, "credentials.txt")
    with open(path, "w") as f:
        f.write(creds)
    p = subprocess.Popen([natterd, "0", "--bind", "127.0.0.1", "--in-memory",
                          "--credentials", path], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, cwd=d)
    line = p.stdout.readline()
    port = int(line.rsplit(":", 1)[1])
    return p, port

def guess(port, src, keep):
    s = socket.socket()
    if src:
        s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    s.sendall(b"HELLO 1\nLOGIN vader guess\n")
    if keep is None:
        s.close()
    else:
        keep.append(s)

def genuine(port, timeout=30.0):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(timeout)
    s.sendall(b"HELLO 1\n")
    f = s.makefile("rb")
    f.readline()
    t = time.perf_counter()
    s.sendall(b"LOGIN yoda wise@!man\n")
    while True:
        line = f.readline()
        if not line:
            return float("inf")
        if line.startswith(b"+WELCOME"):
            dt = time.perf_counter() - t
            s.sendall(b"LOGOUT\n")
            s.close()
            return dt
        if line.startswith(b"-"):
            return float("inf")

def run(natterd, creds, burst):
    p, port = start(natterd, creds)
    try:
        keep = []
        if burst == "closed":
            for a in range(2, 18):
                for _ in range(32):
                    guess(port, "127.0.0.%d" % a, None)
        elif burst == "open":
            for _ in range(150):
                guess(port, "127.0.0.2", keep)
        dt = genuine(port)
        for s in keep:
            s.close()
        return dt
    finally:
        p.kill()
        p.wait()

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("natterd", nargs="*", default=["target/release/natterd"])
    a = ap.parse_args()
    a.natterd = [os.path.abspath(b) for b in a.natterd]
    creds_for = {}
    for b in a.natterd:
        creds_for[b] = ("hans falcon*solo\nyoda %s\nvader %s\nleia princess$1\n"
                        % (hash_pw(b, "wise@!man"), hash_pw(b, "sithlord**")))
    results = {(b, k): [] for b in a.natterd for k in ("none", "closed", "open")}
    for _ in range(a.runs):
        for burst in ("none", "closed", "open"):
            for b in a.natterd:
                results[(b, burst)].append(run(b, creds_for[b], burst))
    print("| binary | attack | genuine login, median (ms) | max (ms) |")
    print("|---|---|---|---|")
    for (b, k), v in results.items():
        print("| %s | %s | %.0f | %.0f |" % (b, k, statistics.median(v) * 1000, max(v) * 1000))

if __name__ == "__main__":
    main()
