#!/usr/bin/env bash
# The fleet test: three `qwenrt serve` replicas behind HAProxy (health checks on /ready), a
# `qwenrt loadgen` run through HAProxy, and one replica sent SIGTERM in the middle of it.
#
# Passes when: no request failed (the killed replica's in-flight streams finish during its
# drain; new requests go to the other two, HAProxy retrying elsewhere any that the draining
# replica answered 503), the killed replica had requests in flight and exited 0, no second of
# the run after the first two went without a token (no stall), and the aggregate rate was
# back within 10 s of the kill: the mean over seconds kill+5..kill+10 is at least
# RECOVER_FRACTION (0.5) of the mean before the kill. Two replicas of three are left, so the
# rate the fleet can get back to is 2/3 of the rate before where replicas do not share cores
# (more on a machine with fewer cores than replicas, as here); 0.5 leaves room for the noise
# of single seconds on a shared machine (they range from about half to 1.4 times their mean).
#
# The replicas run the default model's GGUF (fetched on first use, as the tests do), one
# thread each: real step times and real answer lengths, where the tiny synthetic model would
# finish a stream in milliseconds and leave nothing in flight to drain.
#
# Environment: QWENRT_BIN (default $CARGO_TARGET_DIR/release/qwenrt, built if missing), FLEET_MODEL (a
# GGUF or model directory; default: the default model), FLEET_PORT (HAProxy's port, default
# 18480; the replicas take the next three), FLEET_CLIENTS (6), FLEET_REQUESTS (per client, 16: enough load to last past the kill + 12 s on a faster machine),
# FLEET_MAX_TOKENS (48), FLEET_KILL_AT (seconds into the run, 10), RECOVER_FRACTION (0.5),
# FLEET_CHECK_INTER (HAProxy's health-check interval, 500ms; a longer one sends more requests
# to the draining replica, whose 503s HAProxy then retries elsewhere), FLEET_KEEP (set: keep
# the work directory with every log).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${QWENRT_BIN:-${CARGO_TARGET_DIR:-target}/release/qwenrt}
lb_port=${FLEET_PORT:-18480}
clients=${FLEET_CLIENTS:-6}
requests=${FLEET_REQUESTS:-16}
max_tokens=${FLEET_MAX_TOKENS:-48}
kill_at=${FLEET_KILL_AT:-10}
recover=${RECOVER_FRACTION:-0.5}
check_inter=${FLEET_CHECK_INTER:-500ms}
t_start=$(date +%s.%N)

if ! command -v haproxy >/dev/null; then
    echo "fleet: installing haproxy"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get install -y haproxy >/dev/null
fi
for tool in curl python3; do
    command -v "$tool" >/dev/null || { echo "fleet: $tool is needed" >&2; exit 1; }
done
[ -x "$bin" ] || cargo build --release
model=${FLEET_MODEL:-$("$bin" fetch)}

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${FLEET_KEEP:-}" ]; then echo "fleet: logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# the replicas
replica_pids=()
for i in 1 2 3; do
    port=$((lb_port + i))
    "$bin" serve --model "$model" --port "$port" -t 1 --parallel 2 --ctx 1024 \
        --drain-timeout 30 2>"$work/replica$i.log" &
    replica_pids+=($!)
    pids+=($!)
done
for i in 1 2 3; do
    port=$((lb_port + i))
    for _ in $(seq 600); do
        curl -fs "http://127.0.0.1:$port/ready" >/dev/null && break
        kill -0 "${replica_pids[$((i - 1))]}" 2>/dev/null || {
            echo "fleet: replica $i died while starting:" >&2
            cat "$work/replica$i.log" >&2
            exit 1
        }
        sleep 0.1
    done
    curl -fs "http://127.0.0.1:$port/ready" >/dev/null || { echo "fleet: replica $i never got ready" >&2; exit 1; }
done

# HAProxy: least connections, /ready checked every 500 ms (one failure takes a replica out),
# and a request a draining replica refuses (503) or drops is sent to another one
cat >"$work/haproxy.cfg" <<EOF
global
    maxconn 512
    log stdout format raw local0
defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 300s
    timeout server 300s
    option http-buffer-request
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response 503
frontend fleet
    bind 127.0.0.1:$lb_port
    default_backend replicas
backend replicas
    balance leastconn
    option httpchk GET /ready
    http-check expect status 200
    default-server inter $check_inter fall 1 rise 2
    server r1 127.0.0.1:$((lb_port + 1)) check
    server r2 127.0.0.1:$((lb_port + 2)) check
    server r3 127.0.0.1:$((lb_port + 3)) check
EOF
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$lb_port/ready" >/dev/null && break
    sleep 0.1
done
curl -fs "http://127.0.0.1:$lb_port/ready" >/dev/null || { echo "fleet: haproxy does not answer" >&2; cat "$work/haproxy.log" >&2; exit 1; }

# the load, and the kill in the middle of it
echo "fleet: loadgen $clients clients x $requests requests, max_tokens $max_tokens; SIGTERM to replica 2 at ${kill_at} s"
loadgen_start=$(date +%s.%N)
"$bin" loadgen --url "http://127.0.0.1:$lb_port" -c "$clients" -r "$requests" -n "$max_tokens" \
    --timeout 120 --json >"$work/loadgen.json" 2>"$work/loadgen.err" &
loadgen_pid=$!
pids+=($loadgen_pid)
sleep "$kill_at"
victim=${replica_pids[1]}
# what the victim has in flight: the drain must have something to finish
victim_running=$(curl -fs "http://127.0.0.1:$((lb_port + 2))/metrics" |
    awk '$1 == "qwenrt_active_sequences" { print $2 }')
victim_waiting=$(curl -fs "http://127.0.0.1:$((lb_port + 2))/metrics" |
    awk '$1 == "qwenrt_queue_depth" { print $2 }')
kill_time=$(date +%s.%N)
kill -TERM "$victim"
# when the victim stops listening (the end of its drain)
(
    while curl -s -o /dev/null "http://127.0.0.1:$((lb_port + 2))/health"; do sleep 0.1; done
    date +%s.%N >"$work/victim_closed"
) &
loadgen_rc=0
wait "$loadgen_pid" || loadgen_rc=$?
victim_rc=0
wait "$victim" || victim_rc=$?
t_end=$(date +%s.%N)
for _ in $(seq 50); do [ -s "$work/victim_closed" ] && break; sleep 0.1; done
victim_end=$(cat "$work/victim_closed" 2>/dev/null || echo "$t_end")
grep -m1 -h "r2 is DOWN" "$work/haproxy.log" | sed 's/^/fleet: haproxy: /' || true
# requests HAProxy sent again (the retries field of its HTTP log: actconn/feconn/beconn/srv_conn/retries)
retried=$(grep -cE ' [-A-Za-z]{4} [0-9]+/[0-9]+/[0-9]+/[0-9]+/\+?[1-9][0-9]* ' "$work/haproxy.log" || true)
answered_503=$(grep -E '"POST ' "$work/haproxy.log" | grep -cE ' 503 ' || true)
echo "fleet: haproxy: $retried request(s) retried on another replica, $answered_503 answered 503 to the client"

python3 - "$work/loadgen.json" "$loadgen_start" "$kill_time" "$recover" "$loadgen_rc" \
    "$victim_rc" "$t_start" "$t_end" "${victim_running:-0}" "${victim_waiting:-0}" "$victim_end" <<'EOF'
import json, sys
path, start, killed, recover, lg_rc, victim_rc, t0, t1, v_run, v_wait, v_end = sys.argv[1:]
r = json.load(open(path))
cps = r["chunks_per_second"]
k = float(killed) - float(start)
ki = int(k)
def mean(a, b):
    xs = cps[max(a, 0):max(b, 0)]
    return sum(xs) / len(xs) if xs else float("nan")
before = mean(2, ki)
during = mean(ki, ki + 10)
back = mean(ki + 5, ki + 10)
after = mean(ki + 10, len(cps) - 3)
print(f"fleet: requests {r['requests_ok']} ok, {r['requests_failed']} failed; "
      f"SIGTERM at {k:.1f} s of {r['wall_s']:.1f} s to a replica running {v_run} and queueing "
      f"{v_wait} requests; it stopped listening {float(v_end) - float(killed):.1f} s later and exited {victim_rc}")
print(f"fleet: tokens/s before {before:.1f}, the 10 s after the kill {during:.1f} "
      f"(lowest second {min(cps[ki:ki + 10], default=0)}), s {ki + 5}-{ki + 10} {back:.1f}, "
      f"after {after:.1f}")
print("fleet: chunks each second " + " ".join(map(str, cps)))
print(f"fleet: wall time {float(t1) - float(t0):.1f} s (model load, run, drain)")
bad = []
if r["requests_failed"] or int(lg_rc):
    bad.append(f"{r['requests_failed']} requests failed (loadgen exit {lg_rc}): {r['errors']}")
if float(v_run) < 1:
    bad.append("the SIGTERMed replica had nothing in flight: the drain was not exercised")
if int(victim_rc):
    bad.append(f"the SIGTERMed replica exited {victim_rc}")
stalls = [i for i, n in enumerate(cps[2:-1], start=2) if n == 0]
if stalls:
    bad.append(f"no token at all in second(s) {stalls}")
if len(cps) < ki + 12:
    bad.append(f"the run ended {len(cps)} s in, too soon after the kill to see a recovery")
elif not back >= float(recover) * before:
    bad.append(f"the rate was not back within 10 s: {back:.1f} < {recover} x {before:.1f}")
if bad:
    print("fleet: FAILED: " + "; ".join(bad))
    sys.exit(1)
print("fleet: ok")
EOF
