#!/usr/bin/env bash
# Autobahn (RFC 6455 conformance) harness built on the PyPI package kosoku 0.1.0.
#
# Usage:
#   scripts/autobahn.sh server PORT [extra kosoku args...]
#       Run the Autobahn cases (kosoku fuzzingclient) against an echo server
#       that is already running (or about to) on $AUTOBAHN_HOST:PORT.
#       Reports: ./reports/autobahn-server (index.json + per-case JSON/HTML).
#   scripts/autobahn.sh client-server PORT [extra kosoku args...]
#       Run kosoku's fuzzingserver on $AUTOBAHN_HOST:PORT in the foreground, for
#       a websocket *client* under test. The client must:
#         ws://HOST:PORT/getCaseCount                 -> one text message: N
#         ws://HOST:PORT/runCase?case=I&agent=NAME    -> for I in 1..N, echo every
#                                                        message back
#         ws://HOST:PORT/updateReports?agent=NAME     -> writes the report and
#                                                        makes kosoku exit (the
#                                                        server drops this TCP
#                                                        connection without a
#                                                        close frame: expect 1006)
#       Reports: ./reports/autobahn-client. When kosoku exits the verdict is
#       printed as for client-report, and is the exit code.
#   scripts/autobahn.sh client-report [DIR]
#   scripts/autobahn.sh report DIR
#       Parse an existing report (default DIR: ./reports/autobahn-client).
#
# Verdict: a case passes iff behavior is in $AUTOBAHN_ACCEPT (default
# "OK NON-STRICT INFORMATIONAL") and behaviorClose is in
# $AUTOBAHN_ACCEPT_CLOSE (default "OK INFORMATIONAL"); this is kosoku's own
# CaseResult.passed rule (Autobahn's Pass / Non-Strict / Info). Everything
# else fails: FAILED, ERROR (could not run, e.g. connection refused),
# UNIMPLEMENTED (12.x/13.x when permessage-deflate is not negotiated;
# accept it with AUTOBAHN_ALLOW_UNIMPLEMENTED=1), and close verdicts
# FAILED / UNCLEAN / WRONG CODE / FAILED BY CLIENT. A selected case absent
# from the report counts as failed (MISSING). An empty report fails.
# Prints "autobahn: N passed, M failed" last; exit 0 iff M == 0 and N > 0.
#
# Environment:
#   AUTOBAHN_EXCLUDE      globs to exclude (default "12.* 13.*": compression).
#                         The default is dropped if the extra args contain
#                         -i/--include; set it explicitly (even "") to force it.
#                         kosoku globs support only '*', which also matches '.'.
#   AUTOBAHN_PARALLELISM  kosoku -p in server mode (default 2)
#   AUTOBAHN_HOST         default 127.0.0.1
#   AUTOBAHN_OUTDIR       report dir (default reports/autobahn-server|-client)
#   AUTOBAHN_WAIT         server mode: seconds to wait for PORT (default 20)
#   AUTOBAHN_TIMEOUT      hard limit on the kosoku run, seconds
#                         (default 300 server, 900 client-server)
#   AUTOBAHN_PYTHON       python used to install kosoku / parse (default python3)
set -uo pipefail

KOSOKU_VERSION=0.1.0
PY=${AUTOBAHN_PYTHON:-python3}
HOST=${AUTOBAHN_HOST:-127.0.0.1}

die() { echo "autobahn: ERROR: $*" >&2; exit 2; }

usage() {
    sed -n '2,/^set -uo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

ensure_kosoku() {
    if command -v kosoku >/dev/null 2>&1; then
        KOSOKU=(kosoku)
        return
    fi
    echo "autobahn: kosoku not on PATH; installing kosoku==$KOSOKU_VERSION" >&2
    "$PY" -m pip install --quiet "kosoku==$KOSOKU_VERSION" >&2 \
        || die "pip install kosoku==$KOSOKU_VERSION failed"
    command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1
    hash -r
    if command -v kosoku >/dev/null 2>&1; then
        KOSOKU=(kosoku)
    else
        # console script landed outside PATH: call the entry point directly
        KOSOKU=("$PY" -c 'import sys; sys.argv[0] = "kosoku"; from kosoku._cli import main; main()')
    fi
}

# kosoku 0.1.0 hands a 12.x/13.x case a compressed echo as `bytes` but an uncompressed
# one as `str` (its bridge for Python 2's str payloads), and the case hashes it; so any
# message sent uncompressed under permessage-deflate fails the case with "Strings must
# be encoded before hashing". RFC 7692 lets a sender leave any message uncompressed
# (RSV1 clear), and ours do whenever compressing would not shrink a message. Run a copy
# of kosoku whose case file turns such a `str` back into the bytes that were on the wire
# (kosoku's bridge: UTF-8 for text, latin-1 byte for byte for binary); nothing else in
# kosoku changes.
patch_kosoku() {
    local src
    src=$("$PY" -c 'import kosoku, os; print(os.path.dirname(kosoku.__file__))') \
        || die "kosoku is not importable with $PY"
    KOSOKU_COPY=$(mktemp -d)
    trap 'rm -rf "$KOSOKU_COPY"' EXIT
    cp -r "$src" "$KOSOKU_COPY/kosoku"
    "$PY" - "$KOSOKU_COPY/kosoku/cases/case12_x_x.py" <<'PATCH' || die "patching kosoku failed"
import sys
path = sys.argv[1]
text = open(path).read()
head = "def onMessage(self, msg, binary):\n"
fix = "   if isinstance(msg, str):\n      msg = msg.encode('latin-1' if binary else 'utf-8')\n"
if fix not in text:
    assert text.count(head) == 1, "kosoku's 12.x onMessage changed: revisit this patch"
    open(path, "w").write(text.replace(head, head + fix))
PATCH
    KOSOKU=(env PYTHONPATH="$KOSOKU_COPY" "$PY" -c \
        'import sys; sys.argv[0] = "kosoku"; from kosoku._cli import main; main()')
}

check_port() {
    [[ $1 =~ ^[0-9]+$ ]] && (( $1 > 0 && $1 < 65536 )) || die "bad PORT: '$1'"
}

port_open() { # host port
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

wait_port() { # host port seconds
    local deadline=$((SECONDS + $3))
    until port_open "$1" "$2"; do
        (( SECONDS >= deadline )) && return 1
        sleep 0.2
    done
}

# Build KARGS (selection args) from AUTOBAHN_EXCLUDE and the extra args.
build_selection() {
    local a has_include=0 excl
    KARGS=()
    for a in "$@"; do
        case $a in
            -o|--outdir|--outdir=*|-o?*) die "do not pass -o/--outdir; set AUTOBAHN_OUTDIR" ;;
            -m|--mode|--mode=*) die "do not pass -m/--mode; use the server/client-server subcommands" ;;
            -i|--include|--include=*|-i?*) has_include=1 ;;
        esac
    done
    if [[ -n ${AUTOBAHN_EXCLUDE+set} ]]; then
        excl=$AUTOBAHN_EXCLUDE
    elif (( has_include )); then
        excl=""
    else
        excl="12.* 13.*"
    fi
    local -a pats=()
    read -r -a pats <<<"$excl"   # no pathname expansion here
    for a in "${pats[@]}"; do KARGS+=(-x "$a"); done
    KARGS+=("$@")
}

# Remove a previous run's report files (kosoku writes nothing when a run
# selects zero cases or is killed, so stale files would be read otherwise).
clean_outdir() {
    mkdir -p "$1" || die "cannot create $1"
    rm -f "$1"/index.json "$1"/index.html "$1"/*_case_*.json "$1"/*_case_*.html \
        "$1"/.autobahn-selection.json
}

# Record which case ids the selection should produce (for MISSING detection).
write_selection() { # outdir kosoku-args...
    local out=$1; shift
    "$PY" - "$out/.autobahn-selection.json" "$@" <<'EOF' || echo "autobahn: warning: could not compute the case selection; MISSING cases will not be detected" >&2
import json, re, sys
from kosoku.cases import CASES
out, args = sys.argv[1], sys.argv[2:]
inc, exc = [], []
i = 0
while i < len(args):
    a = args[i]
    for flag, lst in (("-i", inc), ("--include", inc), ("-x", exc), ("--exclude", exc)):
        if a == flag and i + 1 < len(args):
            lst.append(args[i + 1]); i += 1; break
        if a.startswith(flag + "=") and flag.startswith("--"):
            lst.append(a[len(flag) + 1:]); break
        if len(flag) == 2 and a.startswith(flag) and len(a) > 2:
            lst.append(a[2:]); break
    i += 1
def rx(p):  # kosoku globs: '*' only, matching any run of characters
    return re.compile("".join(".*" if c == "*" else re.escape(c) for c in p))
inc_r, exc_r = [rx(p) for p in inc], [rx(p) for p in exc]
ids = [c for c in CASES
       if (not inc_r or any(r.fullmatch(c) for r in inc_r))
       and not any(r.fullmatch(c) for r in exc_r)]
json.dump({"include": inc, "exclude": exc, "cases": ids}, open(out, "w"), indent=1)
EOF
}

# Parse DIR/index.json; print failures and the summary line; return verdict.
parse_report() { # dir [kosoku-exit-code]
    "$PY" - "$1" "${2:-}" <<'EOF'
import json, os, sys
from collections import Counter
d, krc = sys.argv[1], sys.argv[2]
accept = set(os.environ.get("AUTOBAHN_ACCEPT", "OK NON-STRICT INFORMATIONAL").split())
if os.environ.get("AUTOBAHN_ALLOW_UNIMPLEMENTED", "0") == "1":
    accept.add("UNIMPLEMENTED")
accept_close = set(os.environ.get("AUTOBAHN_ACCEPT_CLOSE", "OK INFORMATIONAL").split())
idx_path = os.path.join(d, "index.json")
if not os.path.exists(idx_path):
    print(f"autobahn: ERROR: no report at {idx_path} (kosoku exit {krc or '?'}; "
          "zero cases selected, run killed, or client never called /updateReports)")
    print("autobahn: 0 passed, 1 failed")
    sys.exit(1)
index = json.load(open(idx_path))
expected = None
sel_path = os.path.join(d, ".autobahn-selection.json")
if os.path.exists(sel_path):
    expected = json.load(open(sel_path))["cases"]
def key(c):
    return [int(p) for p in c.split(".")]
passed = failed = 0
lines, breakdown = [], Counter()
multi = len(index) > 1
for agent, cases in sorted(index.items()):
    tag = f" [{agent}]" if multi else ""
    for cid in sorted(cases, key=key):
        e = cases[cid]
        b, bc = e.get("behavior"), e.get("behaviorClose")
        breakdown[b] += 1
        if b in accept and bc in accept_close:
            passed += 1
            continue
        failed += 1
        why = ""
        try:
            c = json.load(open(os.path.join(d, e["reportfile"])))
            why = c.get("result") or ""
            if c.get("resultClose") and c.get("resultClose") != why and bc not in accept_close:
                why += " / " + c["resultClose"]
        except Exception:
            pass
        lines.append(f"  FAIL {cid}{tag}: behavior={b} behaviorClose={bc} "
                     f"remoteCloseCode={e.get('remoteCloseCode')} - {why}"[:400])
    if expected is not None:
        missing = [c for c in expected if c not in cases]
        for cid in missing:
            failed += 1
            breakdown["MISSING"] += 1
            lines.append(f"  FAIL {cid}{tag}: behavior=MISSING (selected but not in report)")
agents = ", ".join(sorted(index))
print(f"autobahn: report {idx_path}; agent(s): {agents}")
print("autobahn: behaviors: " + " ".join(f"{k}={v}" for k, v in sorted(breakdown.items())))
if lines:
    print("autobahn: failed cases:")
    print("\n".join(lines))
if passed + failed == 0:
    print("autobahn: ERROR: report lists no cases")
    failed = 1
print(f"autobahn: {passed} passed, {failed} failed")
sys.exit(0 if failed == 0 else 1)
EOF
}

# Run kosoku with a hard timeout, forwarding INT/TERM; sets KRC.
run_kosoku() { # timeout args...
    local t=$1; shift
    timeout -k 10 "$t" "${KOSOKU[@]}" "$@" &
    local child=$!
    trap 'kill -TERM '"$child"' 2>/dev/null' INT TERM
    wait "$child"; KRC=$?
    # wait returns >128 if interrupted by a trapped signal: wait again
    while kill -0 "$child" 2>/dev/null; do wait "$child"; KRC=$?; done
    trap - INT TERM
}

cmd=${1:-}
[[ -n $cmd ]] && shift
case $cmd in
    server)
        [[ $# -ge 1 ]] || die "usage: $0 server PORT [kosoku args...]"
        port=$1; shift; check_port "$port"
        outdir=${AUTOBAHN_OUTDIR:-reports/autobahn-server}
        tmo=${AUTOBAHN_TIMEOUT:-300}
        ensure_kosoku
        patch_kosoku
        build_selection "$@"
        echo "autobahn: waiting up to ${AUTOBAHN_WAIT:-20}s for $HOST:$port" >&2
        wait_port "$HOST" "$port" "${AUTOBAHN_WAIT:-20}" \
            || { echo "autobahn: ERROR: nothing listening on $HOST:$port after ${AUTOBAHN_WAIT:-20}s"; echo "autobahn: 0 passed, 1 failed"; exit 1; }
        clean_outdir "$outdir"
        write_selection "$outdir" "${KARGS[@]}"
        echo "autobahn: ${KOSOKU[*]:0:1} -p ${AUTOBAHN_PARALLELISM:-2} -o $outdir ${KARGS[*]} $HOST:$port (timeout ${tmo}s)" >&2
        start=$SECONDS
        run_kosoku "$tmo" -p "${AUTOBAHN_PARALLELISM:-2}" -o "$outdir" "${KARGS[@]}" "$HOST:$port"
        echo "autobahn: kosoku exited $KRC after $((SECONDS - start))s" >&2
        if [[ $KRC -ne 0 && $KRC -ne 1 ]]; then
            [[ $KRC -eq 124 || $KRC -eq 137 ]] && echo "autobahn: ERROR: kosoku timed out after ${tmo}s"
            echo "autobahn: 0 passed, 1 failed"
            exit 1
        fi
        parse_report "$outdir" "$KRC"
        ;;
    client-server)
        [[ $# -ge 1 ]] || die "usage: $0 client-server PORT [kosoku args...]"
        port=$1; shift; check_port "$port"
        outdir=${AUTOBAHN_OUTDIR:-reports/autobahn-client}
        tmo=${AUTOBAHN_TIMEOUT:-900}
        ensure_kosoku
        patch_kosoku
        build_selection "$@"
        port_open "$HOST" "$port" && die "$HOST:$port is already in use"
        clean_outdir "$outdir"
        write_selection "$outdir" "${KARGS[@]}"
        {
            echo "autobahn: fuzzingserver on ws://$HOST:$port (timeout ${tmo}s), reports -> $outdir"
            echo "autobahn: client: GET /getCaseCount, then /runCase?case=1..N&agent=NAME, then /updateReports?agent=NAME"
        } >&2
        run_kosoku "$tmo" -m fuzzingserver -o "$outdir" "${KARGS[@]}" "$HOST:$port"
        echo "autobahn: kosoku fuzzingserver exited $KRC" >&2
        if [[ $KRC -ne 0 && $KRC -ne 1 ]]; then
            [[ $KRC -eq 124 || $KRC -eq 137 ]] && echo "autobahn: ERROR: fuzzingserver timed out after ${tmo}s (client never called /updateReports?); no report written"
            echo "autobahn: 0 passed, 1 failed"
            exit 1
        fi
        parse_report "$outdir" "$KRC"
        ;;
    client-report)
        parse_report "${1:-${AUTOBAHN_OUTDIR:-reports/autobahn-client}}"
        ;;
    report)
        [[ $# -ge 1 ]] || die "usage: $0 report DIR"
        parse_report "$1"
        ;;
    -h|--help|help)
        usage
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac
