#!/usr/bin/env python3
"""natterd nodes on NATS JetStream against one natterd (issue 15), with natter-bench.

Starts a fresh `nats-server -js` (temporary storage) and natterd nodes (release build,
--in-memory, generated accounts), plus one single natterd for the same traffic in the
same round, and measures, in interleaved rounds:
  - direct N=1000 W=32 for 5 s: deliveries/s, natterd CPU per delivery (summed over
    the nodes), nats-server CPU per delivery; single node for comparison;
  - light load: N=100 clients at 10 messages/s each (1,000/s): latency p50/p99;
  - a login storm of 10,000 clients spread over 3 nodes;
  - a node killed with SIGKILL: time until a user on another node has seen all of its
    100 users logged out.
Prints each run and the medians. Loopback only; every run is bounded in time.

    cargo build --release && python3 benches/cluster_load.py [--rounds 3]
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATTERD = os.path.join(ROOT, "target", "release", "natterd")
BENCH = os.path.join(ROOT, "target", "release", "natter-bench")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Nats:
    def __init__(self, tmp):
        self.dir = tempfile.mkdtemp(prefix="js-", dir=tmp)
        self.port = free_port()
        self.p = subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port),
                                   "-sd", self.dir], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)

    def url(self):
        return "nats://127.0.0.1:%d" % self.port

    def stop(self):
        self.p.kill()
        self.p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Node:
    def __init__(self, tmp, creds, nats=None, name=None):
        args = [NATTERD, "0", "--bind", "127.0.0.1", "--in-memory", "--credentials", creds]
        if nats:
            args += ["--cluster", nats.url(), "--node", name]
        self.p = subprocess.Popen(args, cwd=tmp, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        self.port = int(self.p.stdout.readline().rsplit(":", 1)[1])

    def addr(self):
        return "127.0.0.1:%d" % self.port

    def stop(self):
        self.p.kill()
        self.p.wait()


def bench(args, nodes, broker=None):
    cmd = [BENCH] + args + ["--server", ",".join(n.addr() for n in nodes),
                            "--server-pid", ",".join(str(n.p.pid) for n in nodes), "--json"]
    if broker:
        cmd += ["--broker-pid", str(broker.p.pid)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout)


def login(port, user, password):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rwb")
    f.write(b"HELLO 1\nLOGIN %s %s\n" % (user.encode(), password.encode()))
    f.flush()
    assert f.readline().startswith(b"+HELLO")
    line = f.readline()
    assert line.startswith(b"+WELCOME"), line
    return s, f


def kill_time(tmp, creds, users=100):
    """Seconds from SIGKILL of a node to its users' logouts seen on another node."""
    nats = Nats(tmp)
    a, b = Node(tmp, creds, nats, "ka"), Node(tmp, creds, nats, "kb")
    try:
        obs, of = login(a.port, "u0", "p0")
        held = [login(b.port, "u%d" % i, "p%d" % i) for i in range(1, users + 1)]
        seen = set()
        while len(seen) < users:  # their logins, first
            line = of.readline().decode().split()
            if line and line[0] == "*LOGIN":
                seen.update(line[1:])
        t0 = time.time()
        b.p.send_signal(signal.SIGKILL)
        gone = set()
        obs.settimeout(30)
        while len(gone) < users:
            line = of.readline().decode().split()
            if not line:
                raise RuntimeError("observer disconnected")
            if line[0] == "*LOGOUT":
                gone.update(line[1:])
            elif line[0] == "*PING":
                of.write(b"PONG %s\n" % line[1].encode())
                of.flush()
        dt = time.time() - t0
        del held
        return dt
    finally:
        a.stop()
        b.stop()
        nats.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--storm", type=int, default=10000)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="natter-cluster-load-")
    creds = os.path.join(tmp, "credentials.txt")
    subprocess.run([BENCH, "gen-credentials", str(max(a.storm, 2000) + 1), "-o", creds],
                   check=True, stdout=subprocess.DEVNULL)
    res = {k: [] for k in ("single", "cluster", "light", "storm", "kill")}
    try:
        for r in range(a.rounds):
            single = Node(tmp, creds)
            d = bench(["direct", "-n", "1000", "-w", "32", "-d", "5s"], [single])
            single.stop()
            res["single"].append((d["deliveries_per_s"], d["server_cpu_us_per_delivery"]))
            print(r, "single", res["single"][-1], flush=True)

            nats = Nats(tmp)
            nodes = [Node(tmp, creds, nats, "n%d" % i) for i in range(2)]
            d = bench(["direct", "-n", "1000", "-w", "32", "-d", "5s"], nodes, nats)
            res["cluster"].append((d["deliveries_per_s"], d["server_cpu_us_per_delivery"],
                                   d["broker_cpu_us_per_delivery"], d["lost"]))
            print(r, "cluster direct", res["cluster"][-1], flush=True)
            d = bench(["direct", "-n", "100", "-w", "1", "--rate", "10", "-d", "5s"], nodes, nats)
            res["light"].append((d["p50_us"], d["p99_us"], d["server_cpu_us_per_delivery"],
                                 d["broker_cpu_us_per_delivery"]))
            print(r, "cluster light", res["light"][-1], flush=True)
            for n in nodes:
                n.stop()
            nats.stop()

            nats = Nats(tmp)
            nodes = [Node(tmp, creds, nats, "s%d" % i) for i in range(3)]
            s = bench(["login-storm", "-n", str(a.storm), "--setup-timeout", "120s"], nodes, nats)
            res["storm"].append((s["all_welcomed_s"], s["all_presence_s"], s["complete"],
                                 s["server_cpu_s"]))
            print(r, "storm over 3 nodes", res["storm"][-1], flush=True)
            for n in nodes:
                n.stop()
            nats.stop()

            res["kill"].append(kill_time(tmp, creds))
            print(r, "killed node: logouts seen after s", res["kill"][-1], flush=True)
        med = lambda xs: statistics.median(xs)
        col = lambda k, i: med([x[i] for x in res[k]])
        single_cpu = col("single", 1)
        cluster_cpu = col("cluster", 1)
        print(json.dumps({
            "single_direct": {"deliveries_per_s": col("single", 0), "cpu_us_per_delivery": single_cpu},
            "cluster_direct_2_nodes": {"deliveries_per_s": col("cluster", 0),
                                       "natterd_cpu_us_per_delivery": cluster_cpu,
                                       "ratio_to_single": round(cluster_cpu / single_cpu, 2),
                                       "broker_cpu_us_per_delivery": col("cluster", 2)},
            "light_load_1000_per_s": {"p50_us": col("light", 0), "p99_us": col("light", 1),
                                      "natterd_cpu_us_per_delivery": col("light", 2),
                                      "broker_cpu_us_per_delivery": col("light", 3)},
            "storm_3_nodes": {"all_welcomed_s": col("storm", 0), "all_presence_s": col("storm", 1),
                              "natterd_cpu_s": col("storm", 3)},
            "killed_node_logouts_seen_s": med(res["kill"]),
        }, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
