#!/usr/bin/env bash
# Two meshed proxies on one machine: a client in cluster `west` calls `web` in cluster `east`.
#
#   curl -> west mesh-proxy (127.0.0.1:4140, routes by Host) ==mTLS, mesh.h2==> east mesh-proxy
#        (127.0.0.2:4143) -> web (python3 http.server on 127.0.0.2:8080)
#
# Each cluster has its own root and trust domain; each proxy trusts both (a linked bundle set).
# Usage: demo/two-proxies.sh [WORKDIR]   (needs python3; builds with cargo)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
cd "$here"
cargo build -q -p mesh-cli -p mesh-proxy
bin="${CARGO_TARGET_DIR:-$here/target}/debug"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

mesh() { "$bin/mesh" "$@"; }
for cluster in west east; do
  mesh trust create-root --trust-domain "$cluster" --out "$work/$cluster/root" --force >/dev/null
  mesh trust create-issuer --root "$work/$cluster/root" --out "$work/$cluster/issuer" --force >/dev/null
done
mesh trust issue --issuer "$work/west/issuer" --identity spiffe://west/ns/default/sa/client \
  --out "$work/west/client" --force >/dev/null
mesh trust issue --issuer "$work/east/issuer" --identity spiffe://east/ns/default/sa/web \
  --out "$work/east/web" --force >/dev/null
mesh trust bundle "$work/west/root/root.crt" "$work/east/root/root.crt" --out "$work/bundle" --force >/dev/null

cat >"$work/discovery.json" <<JSON
{
  "web.default.svc.cluster.local:80": {
    "protocol_hint": "http",
    "endpoints": [ { "addr": "127.0.0.2:8080", "identity": "spiffe://east/ns/default/sa/web", "cluster": "east" } ]
  }
}
JSON

python3 -m http.server 8080 --bind 127.0.0.2 --directory "$work" >"$work/web.log" 2>&1 &
pids+=($!)
"$bin/mesh-proxy" run --identity-dir "$work/east/web" --trust-bundle "$work/bundle" \
  --discovery-file "$work/discovery.json" --app-ip 127.0.0.2 \
  --inbound-addr 127.0.0.2:4143 --outbound-addr 127.0.0.2:4140 \
  --admin-addr 127.0.0.2:4191 --tap-addr 127.0.0.2:4190 >"$work/east.log" 2>&1 &
pids+=($!)
"$bin/mesh-proxy" run --identity-dir "$work/west/client" --trust-bundle "$work/bundle" \
  --discovery-file "$work/discovery.json" --peer-inbound-port 4143 \
  --inbound-addr 127.0.0.1:4143 --outbound-addr 127.0.0.1:4140 \
  --admin-addr 127.0.0.1:4191 --tap-addr 127.0.0.1:4190 >"$work/west.log" 2>&1 &
pids+=($!)

for _ in $(seq 100); do
  curl -fsS "http://127.0.0.2:8080/" >/dev/null 2>&1 && break
  sleep 0.1
done
for admin in 127.0.0.1:4191 127.0.0.2:4191; do
  for _ in $(seq 100); do
    curl -fsS "http://$admin/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
done

echo "== GET http://web.default.svc.cluster.local/discovery.json through west's outbound proxy"
curl -fsS -x http://127.0.0.1:4140 http://web.default.svc.cluster.local/discovery.json | head -3
echo "== west's metrics for that request"
curl -fsS http://127.0.0.1:4191/metrics | grep '^response_total{' | grep 'direction="outbound"'
echo "== east's metrics name the caller (client_id)"
curl -fsS http://127.0.0.2:4191/metrics | grep '^request_total{' | grep 'direction="inbound"' || true
echo "Files and logs: $work"
