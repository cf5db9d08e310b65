"""Runs the waypoint-vs-Envoy benchmark and prints the table (see ../waypoint.sh)."""
import os, re, signal, statistics, subprocess, sys, time, urllib.request

CPU, DUR, ROUNDS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PIN = ["taskset", "-c", CPU]
URL = "http://127.0.0.1:{port}/reviews/1"
TICK = os.sysconf("SC_CLK_TCK")


def start(cmd, log):
    return subprocess.Popen(PIN + cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_up(port):
    for _ in range(100):
        try:
            req = urllib.request.Request(URL.format(port=port), headers={"x-token": "secret"})
            urllib.request.urlopen(req, timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"proxy on {port} did not come up")


def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port, conns, extra=()):
    out = subprocess.run(
        PIN + ["wrk", "-t1", f"-c{conns}", f"-d{DUR}s", "--latency", "-H", "x-token: secret", *extra, URL.format(port=port)],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    lat = {m.group(1): ms(m.group(2), m.group(3)) for m in re.finditer(r"\s(50|99)%\s+([\d.]+)(us|ms|s)", out)}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise SystemExit(f"{bad.group(1)} non-2xx responses on {port}:\n{out}")
    return rps, lat.get("50", 0.0), lat.get("99", 0.0), total


def measure(name, port, pid):
    r = {"rss_idle": rss(pid)}
    r["rps1"], r["p50_1"], r["p99_1"], _ = wrk(port, 1)
    before = cpu_s(pid)
    r["rps64"], r["p50_64"], r["p99_64"], n = wrk(port, 64)
    r["cpu_us"] = (cpu_s(pid) - before) * 1e6 / max(n, 1)
    _, r["p50_fixed"], r["p99_fixed"], _ = wrk(port, 100, ["-s", os.path.join(HERE, "delay.lua")])
    r["rps_new"], _, _, _ = wrk(port, 1, ["-H", "Connection: close"])
    r["rss_load"] = rss(pid)
    return r


def main():
    echo = start([os.path.join(ROOT, "target/release/ambit"), "echo", "--port", "18081", "--port", "18082", "--port", "18083", "--name", "reviews"], "/tmp/bench-echo.log")
    procs = [echo]
    try:
        time.sleep(0.5)
        wp = start([os.path.join(ROOT, "target/release/waypoint"), "--config-dir", os.path.join(HERE, "istio"), "--gateway", "bench/waypoint", "--listen", "127.0.0.1:15101", "--destination", "10.96.0.20:9080"], "/tmp/bench-waypoint.log")
        envoy = start(["envoy", "-c", os.path.join(HERE, "envoy.yaml"), "--concurrency", "1", "-l", "warning", "--base-id", "71"], "/tmp/bench-envoy.log")
        procs += [wp, envoy]
        wait_up(15101)
        wait_up(15102)
        time.sleep(1)
        rounds = {"ambit waypoint": [], "envoy": []}
        for _ in range(ROUNDS):
            rounds["ambit waypoint"].append(measure("waypoint", 15101, wp.pid))
            rounds["envoy"].append(measure("envoy", 15102, envoy.pid))
        rows = [
            ("req/s, 1 keep-alive conn", "rps1", "{:.0f}"), ("p50 ms, 1 conn", "p50_1", "{:.3f}"), ("p99 ms, 1 conn", "p99_1", "{:.3f}"),
            ("req/s, 64 keep-alive conns", "rps64", "{:.0f}"), ("p50 ms, 64 conns", "p50_64", "{:.3f}"), ("p99 ms, 64 conns", "p99_64", "{:.3f}"),
            ("p50 ms, ~2000 req/s over 100 conns", "p50_fixed", "{:.3f}"), ("p99 ms, ~2000 req/s over 100 conns", "p99_fixed", "{:.3f}"),
            ("req/s, new connection per request", "rps_new", "{:.0f}"), ("CPU µs per request (64 conns)", "cpu_us", "{:.1f}"),
            ("RSS MiB idle", "rss_idle", "{:.1f}"), ("RSS MiB after load", "rss_load", "{:.1f}"),
        ]
        print(f"waypoint vs Envoy, everything on CPU {CPU}, {ROUNDS} rounds of {DUR}s per point: median (min–max)\n")
        print(f"| {'metric':36} | {'ambit waypoint':26} | {'envoy':26} | ratio |")
        print(f"|{'-'*38}|{'-'*28}|{'-'*28}|-------|")
        for label, key, fmt in rows:
            cells = []
            meds = []
            for name in rounds:
                vals = [r[key] for r in rounds[name]]
                med = statistics.median(vals)
                meds.append(med)
                cells.append(f"{fmt.format(med)} ({fmt.format(min(vals))}–{fmt.format(max(vals))})")
            ratio = meds[0] / meds[1] if meds[1] else float("nan")
            print(f"| {label:36} | {cells[0]:26} | {cells[1]:26} | {ratio:5.2f} |")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


main()
