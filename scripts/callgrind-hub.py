#!/usr/bin/env python3
"""Runs one W4 or W7 case of the bench with its hub (the server child) under callgrind,
for a fixed number of calls or messages, so that two builds can be compared by
instruction counts (repeatable on a loaded machine, where rates are not).

    scripts/callgrind-hub.py new ./target/release/cluster-bench w4-64 OUT_DIR [COUNT]
    scripts/callgrind-hub.py old /path/to/f373969/cluster w7 OUT_DIR [COUNT]

`new` is today's `cluster-bench child SPEC`, `old` is f373969's `cluster bench --child
SPEC` (the same line protocol). Only the hub runs under valgrind; the clients child runs
natively. Cases: `w4-64` (64 calls in flight, COUNT calls), `w4-1` (one in flight), `w7`
(100 subscribers; COUNT messages published, 100 deliveries each). The whole life of the
hub is counted (start, connections, a short warm-up, shut-down): run two counts and take
the difference over the difference in calls for the cost of one (`callgrind_control -i`
did not switch a multi-threaded hub's instrumentation reliably). Prints the hub's total
instructions and its count; the profile is OUT_DIR/callgrind.KIND.CASE.COUNT.out.

With HUB_WRAP=perf-stat the hub runs under `perf stat` instead (task-clock and system
calls, in OUT_DIR/perf-stat.*), with HUB_WRAP=perf-record under `perf record -e
cpu-clock -g` (OUT_DIR/perf.*).
"""


import json
import os
import subprocess
import sys
import threading
import queue


def child_cmd(kind, exe, spec):
    if kind == "new":
        return [exe, "child", json.dumps(spec)]
    return [exe, "bench", "--child", json.dumps(spec)]


def lines_of(proc, who, q):
    for line in proc.stdout:
        q.put((who, line.strip()))
    q.put((who, None))


def expect(q, who, tag, pending):
    for i, (w, line) in enumerate(pending):
        if w == who and line.split()[0] == tag:
            del pending[i]
            return line.split()[1:]
    while True:
        w, line = q.get(timeout=1800)
        if line is None:
            sys.exit(f"the {w} child exited")
        if line.startswith("ERROR"):
            sys.exit(f"{w}: {line}")
        if w == who and line.split()[0] == tag:
            return line.split()[1:]
        pending.append((w, line))


def total_ir(out):
    # "summary:" / "totals:" line of the callgrind output file
    for line in open(out):
        if line.startswith("totals:") or line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError("no totals in " + out)


def main():
    kind, exe, case, out_dir = sys.argv[1:5]
    count = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    os.makedirs(out_dir, exist_ok=True)
    workload = "W7" if case == "w7" else "W4"
    server = {"system": "Ours", "workload": workload, "senders": 0}
    if case == "w4-64":
        clients = {"conns": 1, "count": count or 200_000, "warmup": 1_000, "in_flight": 64}
    elif case == "w4-1":
        clients = {"conns": 1, "count": count or 20_000, "warmup": 1_000, "in_flight": 1}
    elif case == "w7":
        clients = {"conns": 100, "count": count or 20_000, "warmup": 0, "in_flight": 0}
    else:
        sys.exit("case: w4-64, w4-1 or w7")
    out = os.path.join(out_dir, f"callgrind.{kind}.{case}.{count}.out")
    valgrind = [
        "valgrind", "--tool=callgrind",
        f"--callgrind-out-file={out}", "--dump-instr=no",
    ]
    if os.environ.get("HUB_WRAP") == "perf-stat":
        # System calls and CPU time of the hub instead of its instructions.
        events = ",".join(["task-clock"] + [f"syscalls:sys_enter_{c}" for c in
                          ("sendto", "recvfrom", "write", "writev", "read", "epoll_wait",
                           "futex")])
        out = out.replace("callgrind.", "perf-stat.")
        valgrind = ["perf", "stat", "-x,", "-e", events, "-o", out]
    if os.environ.get("HUB_WRAP") == "perf-record":
        out = out.replace("callgrind.", "perf.")
        valgrind = ["perf", "record", "-e", "cpu-clock", "-F", "20000", "-g", "-o", out]
    q = queue.Queue()
    pending = []
    srv = subprocess.Popen(valgrind + child_cmd(kind, exe, {"role": "server", **server}),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                           stderr=open(out + ".log", "w"))
    threading.Thread(target=lines_of, args=(srv, "server", q), daemon=True).start()
    [port] = expect(q, "server", "PORT", pending)
    spec = {"role": "clients", "workload": workload, "port": int(port), "client": "Member",
            **clients}
    cli = subprocess.Popen(child_cmd(kind, exe, spec), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    threading.Thread(target=lines_of, args=(cli, "clients", q), daemon=True).start()
    expect(q, "clients", "CONNECTED", pending)
    if workload == "W7":
        srv.stdin.write(f"SUBS {clients['conns']}\n")
        srv.stdin.flush()
        expect(q, "server", "SUBS", pending)
    cli.stdin.write("GO\n")
    cli.stdin.flush()
    if workload == "W7":
        total, nanos = expect(q, "clients", "PUBSUB", pending)
    elif clients["in_flight"] > 1:
        total, nanos = expect(q, "clients", "RPC", pending)
    else:
        fields = expect(q, "clients", "ECHO", pending)
        total, nanos = fields[0], fields[1]
    cli.stdin.close()
    cli.wait()
    srv.stdin.close()
    srv.wait()
    n = int(total)
    if valgrind[0] == "perf":
        print(f"{kind} {case}: {n}; {out}")
        if valgrind[1] == "stat":
            print(open(out).read())
        return
    ir = total_ir(out)
    print(f"{kind} {case}: {n} {'deliveries' if workload == 'W7' else 'calls'} in "
          f"{int(nanos) / 1e9:.2f} s under valgrind; hub {ir} Ir; {out}")


if __name__ == "__main__":
    main()
