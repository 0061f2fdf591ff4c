#!/usr/bin/env python3
"""Memory per idle TLS connection and the server's CPU per TLS login (issue 14).

Starts natterd (release build) with generated accounts, connects N clients over TLS
(Python's ssl, certificate checks off: this measures the server) that say HELLO and
LOGIN and then stay idle, and reports natterd's RSS per connection (after a probe
connection, as natter-bench idle does) and its CPU time per TLS login. With --plain the
same over plain text, for comparison.

    python3 benches/tls_idle.py -n 2000 [--plain]
"""
import argparse, os, socket, ssl, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATTERD = os.path.join(ROOT, "target", "release", "natterd")
BENCH = os.path.join(ROOT, "target", "release", "natter-bench")

def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for l in f:
            if l.startswith("VmRSS:"):
                return int(l.split()[1])

def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--plain", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="natter-tls-")
    creds = os.path.join(tmp, "credentials.txt")
    subprocess.run([BENCH, "gen-credentials", str(a.n + 1), "-o", creds], check=True,
                   stdout=subprocess.DEVNULL)
    p = subprocess.Popen([NATTERD, "0", "--bind", "127.0.0.1", "--in-memory",
                          "--credentials", creds], cwd=tmp, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    port = int(p.stdout.readline().rsplit(":", 1)[1])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    def connect(i):
        s = socket.create_connection(("127.0.0.1", port))
        if not a.plain:
            s = ctx.wrap_socket(s)
        s.sendall(b"HELLO 1\nLOGIN u%d p%d\n" % (i, i))
        buf = b""
        while b"+WELCOME" not in buf:
            buf += s.recv(4096)
        return s
    probe = connect(a.n)
    probe.close()
    time.sleep(0.5)
    base, cpu0 = rss_kib(p.pid), cpu_s(p.pid)
    t0 = time.time()
    conns = [connect(i) for i in range(a.n)]
    took = time.time() - t0
    time.sleep(0.5)
    after, cpu1 = rss_kib(p.pid), cpu_s(p.pid)
    print({"transport": "plain" if a.plain else "tls", "clients": a.n,
           "rss_per_conn_bytes": round((after - base) * 1024 / a.n),
           "server_cpu_per_login_us": round((cpu1 - cpu0) * 1e6 / a.n),
           "logins_per_s_sequential": round(a.n / took)})
    for s in conns:
        s.close()
    p.kill()

if __name__ == "__main__":
    main()
