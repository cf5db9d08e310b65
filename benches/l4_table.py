"""Prints the L4 benchmark table from l4_bench's key=value lines (one per round)."""
import statistics, sys

cpu = sys.argv[1]
rounds = [dict(kv.split("=") for kv in line.split()) for line in sys.stdin if "=" in line]
def vals(k):
    return [float(r[k]) for r in rounds if k in r]
def cell(k, fmt):
    v = vals(k)
    if not v:
        return "-"
    return f"{fmt.format(statistics.median(v))} ({fmt.format(min(v))}–{fmt.format(max(v))})"
rows = [
    ("iperf3 1 stream, Gbit/s", "iperf1_gbps", "{:.2f}"),
    ("iperf3 4 streams, Gbit/s", "iperf4_gbps", "{:.2f}"),
    ("64 B TCP round trip p50, µs", "rtt_p50_us", "{:.1f}"),
    ("64 B TCP round trip p99, µs", "rtt_p99_us", "{:.1f}"),
    ("HTTP keep-alive 1 conn, req/s", "ka1_rps", "{:.0f}"),
    ("  p50 / p99 ms", None, None),
    ("HTTP keep-alive 64 conns, req/s", "ka64_rps", "{:.0f}"),
    ("  p50 / p99 ms ", None, None),
    ("new connection per request, req/s", "newconn_rps", "{:.0f}"),
    ("  p50 / p99 ms  ", None, None),
    ("1,000 conns at ≈2,000 req/s: p50 ms", "fixed_p50_ms", "{:.2f}"),
    ("1,000 conns at ≈2,000 req/s: p99 ms", "fixed_p99_ms", "{:.2f}"),
    ("CPU µs per request (64 conns), both ztunnels", "cpu_us_per_req", "{:.1f}"),
    ("CPU µs per new connection, both ztunnels", "cpu_us_per_conn", "{:.1f}"),
    ("CPU ns per byte (1 stream), both ztunnels", "ns_per_byte", "{:.2f}"),
]
pairs = {"  p50 / p99 ms": "ka1", "  p50 / p99 ms ": "ka64", "  p50 / p99 ms  ": "newconn"}
print(f"L4: direct vs through two ztunnels, everything on CPU {cpu}, {len(rounds)} rounds: median (min–max)\n")
print(f"| {'metric':46} | {'direct':24} | {'mesh':24} | mesh/direct |")
print(f"|{'-'*48}|{'-'*26}|{'-'*26}|-------------|")
for label, key, fmt in rows:
    if key is None:
        p = pairs[label]
        d = f"{statistics.median(vals('direct_'+p+'_p50_ms')):.3f} / {statistics.median(vals('direct_'+p+'_p99_ms')):.3f}"
        m = f"{statistics.median(vals('mesh_'+p+'_p50_ms')):.3f} / {statistics.median(vals('mesh_'+p+'_p99_ms')):.3f}"
        print(f"| {label:46} | {d:24} | {m:24} |             |")
        continue
    d, m = vals("direct_" + key), vals("mesh_" + key)
    cpu_row = key.startswith("cpu") or key == "ns_per_byte"
    ratio = f"{statistics.median(m) / statistics.median(d):.2f}" if d and m and statistics.median(d) and not cpu_row else ""
    print(f"| {label:46} | {cell('direct_' + key, fmt):24} | {cell('mesh_' + key, fmt):24} | {ratio:11} |")
for label, key in [("VmRSS idle, MiB (ztunnel process)", "rss{}_idle_mib"),
                   ("VmRSS, 1,000 idle tunnelled conns, MiB", "rss{}_1000_conns_mib"),
                   ("VmHWM over the run, MiB", "hwm{}_mib")]:
    for n in (1, 2):
        print(f"| {label + f' node{n}':46} | {'':24} | {cell(key.format(n), '{:.1f}'):24} |             |")
rtt = statistics.median(vals("mesh_rtt_p50_us")) - statistics.median(vals("direct_rtt_p50_us"))
print(f"\nadded round-trip p50: {rtt:.1f} µs; 1-stream throughput: {100*statistics.median(vals('mesh_iperf1_gbps'))/statistics.median(vals('direct_iperf1_gbps')):.0f} % of direct")
