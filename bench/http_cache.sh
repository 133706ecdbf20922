#!/usr/bin/env bash
# Cached thumbnail over HTTP, beside nginx serving the same bytes as a static file:
#   bench/http_cache.sh [--build DIR] [--duration SECONDS] [--rounds N] [--connections N]
#
# Starts thumbnail_server with --http-listen and --cache-dir on loopback, asks for one
# thumbnail once (the front decodes it and stores it in the cache), writes the bytes it
# got to a file, and starts nginx (Debian's, sendfile on, keep-alive, no access log, one
# worker per core) serving that file. Then wrk (-c16 by default, 2 threads) measures
# both, interleaved, --rounds times: each round runs the gateway then nginx for
# --duration seconds. Prints one line per run (p50, p99, requests/s) and the medians,
# with the targets: p50 <= 0.5 ms, p99 <= 2 ms, >= 50 % of nginx's rate.
# Every response in the runs must be a 200 of the right length (wrk's Non-2xx count and
# the transfer per request are checked); exit 1 otherwise.
set -euo pipefail
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
build=$root/build
duration=10
rounds=3
conns=16
while [ $# -gt 0 ]; do
    case $1 in
    --build) build=$2; shift ;;
    --duration) duration=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --connections) conns=$2; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/http_cache.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for tool in wrk nginx ffmpeg curl; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] ||
        { echo "bench/http_cache.sh: $tool is not installed" >&2; exit 2; }
done
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
server=$build/src/server/thumbnail_server
[ -x "$server" ] || { echo "bench/http_cache.sh: $server is not built" >&2; exit 2; }

work=$(mktemp -d /tmp/tn-http-bench.XXXXXX)
srv_pid= ngx_pid=
cleanup() {
    [ -n "$srv_pid" ] && kill -INT "$srv_pid" 2>/dev/null && wait "$srv_pid" 2>/dev/null || true
    [ -n "$ngx_pid" ] && kill -QUIT "$ngx_pid" 2>/dev/null || true
    sleep 0.3
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mkdir -p "$work/media" "$work/static" "$work/nginx"
chmod 755 "$work" # nginx workers run as nobody when started by root
ffmpeg -nostdin -loglevel error -f lavfi -i testsrc2=size=1280x720:rate=25:duration=10 \
    -c:v libx264 -preset veryfast -pix_fmt yuv420p "$work/media/clip.mp4"
grpc_port=$(free_port) http_port=$(free_port) ngx_port=$(free_port)
"$server" --listen "127.0.0.1:$grpc_port" --workers 1 --media-root "$work/media" \
    --cache-dir "$work/cache" --http-listen "127.0.0.1:$http_port" --log-level warn \
    --log-file "$work/server.log" &
srv_pid=$!
path="/v1/thumbnail/clip.mp4.jpg?time=5&width=320"
for _ in $(seq 100); do
    curl -sf -o "$work/static/thumb.jpg" "http://127.0.0.1:$http_port$path" && break
    sleep 0.1
done
size=$(stat -c %s "$work/static/thumb.jpg")
hit=$(curl -s -D- -o /dev/null "http://127.0.0.1:$http_port$path" | tr -d '\r' | grep -i '^x-cache:' || true)
[ "$hit" = "X-Cache: HIT" ] || { echo "bench/http_cache.sh: the second request was not a cache hit" >&2; exit 1; }

cat > "$work/nginx/nginx.conf" <<EOF
daemon off;
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path $work/nginx; proxy_temp_path $work/nginx;
    fastcgi_temp_path $work/nginx; uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
    server {
        listen 127.0.0.1:$ngx_port;
        root $work/static;
        location / { default_type image/jpeg; etag on; }
    }
}
EOF
"$nginx_bin" -c "$work/nginx/nginx.conf" -p "$work/nginx" &
ngx_pid=$!
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$ngx_port/thumb.jpg" && break; sleep 0.1; done
cmp <(curl -s "http://127.0.0.1:$ngx_port/thumb.jpg") <(curl -s "http://127.0.0.1:$http_port$path") ||
    { echo "bench/http_cache.sh: nginx and the gateway serve different bytes" >&2; exit 1; }

# wrk output -> "p50_ms p99_ms rate"; fails on non-2xx or a wrong body size
measure() {
    local url=$1 out
    out=$(wrk -t2 -c"$conns" -d"${duration}s" --latency "$url")
    if grep -q "Non-2xx" <<<"$out"; then echo "bench/http_cache.sh: non-2xx answers from $url" >&2; echo "$out" >&2; exit 1; fi
    /usr/bin/python3 - "$size" <<PY "$out"
import re, sys
size, out = int(sys.argv[1]), sys.argv[2]
def ms(v, u):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]
p = {k: ms(v, u) for k, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
n = int(re.search(r"(\d+) requests in", out).group(1))
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
total = re.search(r"requests in [\d.]+\w+, ([\d.]+)(B|KB|MB|GB)\s+read", out)
read = float(total.group(1)) * {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[total.group(2)]
if not (size <= read / n <= size + 600):  # the body and a few hundred bytes of headers
    sys.exit("bench/http_cache.sh: %.0f bytes per response, the image is %d" % (read / n, size))
print("%.3f %.3f %.0f" % (p["50"], p["99"], rate))
PY
}

echo "image: $size bytes (JPEG 320 px); wrk -t2 -c$conns -d${duration}s; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-8s %-9s %10s %10s %12s\n' round server p50_ms p99_ms requests/s
gw=() ngx=()
for r in $(seq "$rounds"); do
    g=$(measure "http://127.0.0.1:$http_port$path")
    n=$(measure "http://127.0.0.1:$ngx_port/thumb.jpg")
    gw+=("$g") ngx+=("$n")
    printf '%-8s %-9s %10s %10s %12s\n' "$r" gateway $g
    printf '%-8s %-9s %10s %10s %12s\n' "$r" nginx $n
done
/usr/bin/python3 - <<PY
import statistics as st
gw = [list(map(float, x.split())) for x in """$(printf '%s\n' "${gw[@]}")""".splitlines()]
ngx = [list(map(float, x.split())) for x in """$(printf '%s\n' "${ngx[@]}")""".splitlines()]
med = lambda rows, i: st.median(r[i] for r in rows)
g50, g99, grate = med(gw, 0), med(gw, 1), med(gw, 2)
n50, n99, nrate = med(ngx, 0), med(ngx, 1), med(ngx, 2)
ratio = grate / nrate
print()
print("| median of $rounds | p50 ms | p99 ms | requests/s |")
print("|---|---|---|---|")
print("| gateway (cache hit) | %.3f | %.3f | %.0f |" % (g50, g99, grate))
print("| nginx (static file) | %.3f | %.3f | %.0f |" % (n50, n99, nrate))
print()
print("targets: p50 <= 0.5 ms: %s (%.3f); p99 <= 2 ms: %s (%.3f); rate >= 50%% of nginx: %s (%.0f%%)"
      % ("met" if g50 <= 0.5 else "MISSED", g50, "met" if g99 <= 2 else "MISSED", g99,
         "met" if ratio >= 0.5 else "MISSED", 100 * ratio))
PY
