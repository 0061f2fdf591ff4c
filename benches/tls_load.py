#!/usr/bin/env python3
"""TLS against plain text under load (issue 14), with natter-bench --tls.

Starts natterd (release build, --in-memory) with generated accounts and runs, in
interleaved rounds so both transports see the same machine noise:
  - direct N=1000 W=32 for 5 s: server CPU per delivery, plain and TLS;
  - login-storm of 10,000 clients: time until all are welcomed, server CPU, peak RSS.
Prints each run and the medians. Loopback only; every run is bounded in time.

    cargo build --release && python3 benches/tls_load.py [--rounds 3]
"""
import argparse, json, os, statistics, subprocess, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATTERD = os.path.join(ROOT, "target", "release", "natterd")
BENCH = os.path.join(ROOT, "target", "release", "natter-bench")

def bench(args, port, pid):
    out = subprocess.run([BENCH] + args + ["--server", "127.0.0.1:%d" % port,
                          "--server-pid", str(pid), "--json"],
                         check=True, capture_output=True, text=True, timeout=180)
    return json.loads(out.stdout)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--storm", type=int, default=10000)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="natter-tls-load-")
    creds = os.path.join(tmp, "credentials.txt")
    subprocess.run([BENCH, "gen-credentials", str(max(a.storm, 2000) + 1), "-o", creds],
                   check=True, stdout=subprocess.DEVNULL)
    p = subprocess.Popen([NATTERD, "0", "--bind", "127.0.0.1", "--in-memory",
                          "--credentials", creds], cwd=tmp, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(p.stdout.readline().rsplit(":", 1)[1])
        runs = {"plain": [], "tls": []}
        storms = {"plain": [], "tls": []}
        for r in range(a.rounds):
            for t in ("plain", "tls"):
                extra = ["--tls"] if t == "tls" else []
                d = bench(["direct", "-n", "1000", "-w", "32", "-d", "5s"] + extra, port, p.pid)
                runs[t].append(d["server_cpu_us_per_delivery"])
                s = bench(["login-storm", "-n", str(a.storm)] + extra, port, p.pid)
                storms[t].append((s["all_welcomed_s"], s["server_cpu_s"],
                                  s["server_peak_rss_kib"]))
                print(r, t, "cpu/delivery us", d["server_cpu_us_per_delivery"],
                      "storm s", s["all_welcomed_s"], "storm cpu s", s["server_cpu_s"],
                      "peak rss KiB", s["server_peak_rss_kib"], flush=True)
        med = lambda xs: statistics.median(xs)
        dp, dt = med(runs["plain"]), med(runs["tls"])
        sp = [med([x[i] for x in storms["plain"]]) for i in range(3)]
        st = [med([x[i] for x in storms["tls"]]) for i in range(3)]
        print(json.dumps({
            "direct_cpu_us_per_delivery": {"plain": dp, "tls": dt, "ratio": round(dt / dp, 2)},
            "storm_all_welcomed_s": {"plain": sp[0], "tls": st[0]},
            "storm_server_cpu_s": {"plain": sp[1], "tls": st[1]},
            "handshake_cpu_us_per_login": round((st[1] - sp[1]) * 1e6 / a.storm),
            # VmHWM is a high-water mark over natterd's life: the first round's plain
            # storm, then its TLS storm, are the only clean readings.
            "storm_peak_rss_kib_round0": {"plain": storms["plain"][0][2],
                                          "tls": storms["tls"][0][2]},
        }, indent=1))
    finally:
        p.kill()

if __name__ == "__main__":
    main()
