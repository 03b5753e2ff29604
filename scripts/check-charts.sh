#!/usr/bin/env bash
# The Helm charts, checked as CI checks them: `helm lint --strict` on every
# chart, and the umbrella rendered with its defaults and with the production
# example, every manifest through `kubernetes-validate --strict`. No cluster
# is needed. Needs helm and kubernetes-validate (scripts/test.sh installs
# both).
set -euo pipefail
cd "$(dirname "$0")/../deploy/helm"

SERVICES=(gateway profile-svc aggregate-svc id-svc ingest-worker)
# Rendering the gateway and the workers needs brokers; the defaults leave
# them to the operator.
SET=(--set global.kafka.brokers=kafka-0.kafka:9092)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Dependencies first: the library into each service chart, then the
# service charts into the umbrella.
for chart in "${SERVICES[@]}" allezon; do
  helm dependency build "$chart" >/dev/null
done

for chart in allezon-common "${SERVICES[@]}" allezon; do
  helm lint --strict "$chart" "${SET[@]}"
done

helm template allezon allezon "${SET[@]}" >"$out/default.yaml"
helm template allezon allezon -f values-production.yaml >"$out/production.yaml"
# Mutual TLS on the internal gRPC traffic: certificates mounted in every
# pod, https endpoints, and HTTP probes (the kubelet's gRPC probe has no TLS).
helm template allezon allezon "${SET[@]}" --set global.grpcTls.enabled=true \
  --set global.grpcTls.secretName=allezon-grpc-tls --set global.grpcTls.mutual=true \
  >"$out/grpc-tls.yaml"
for want in ALLEZON_GRPC_TLS_CLIENT_CA ALLEZON_GRPC_TLS_CLIENT_CERT \
  'ALLEZON_PROFILE_SVC: https://' 'secretName: allezon-grpc-tls'; do
  grep -q "$want" "$out/grpc-tls.yaml" || { echo "grpc-tls.yaml: no $want" >&2; exit 1; }
done
if grep -q '^ *grpc:$' "$out/grpc-tls.yaml"; then
  echo "grpc-tls.yaml: a gRPC probe, which cannot speak TLS" >&2; exit 1
fi
for rendered in "$out"/*.yaml; do
  for service in "${SERVICES[@]}"; do
    grep -q "app.kubernetes.io/name: $service" "$rendered" ||
      { echo "$rendered: $service is not rendered" >&2; exit 1; }
  done
  if grep -n '<nil>' "$rendered"; then echo "$rendered: a value is missing" >&2; exit 1; fi
  python3 -m kubernetes_validate --strict --quiet "$rendered"
  echo "$(basename "$rendered"): $(grep -c '^kind:' "$rendered") manifests valid"
done

# Values the charts must refuse, each with its reason.
refuse() { # WHY ARGS…
  local why=$1; shift
  if helm template allezon allezon "$@" >/dev/null 2>"$out/err"; then
    echo "accepted, but should not be: $why" >&2; exit 1
  fi
  grep -q "$why" "$out/err" || { cat "$out/err" >&2; exit 1; }
}
refuse "set global.kafka.brokers"
refuse "one pod's volume" "${SET[@]}" --set profile-svc.replicaCount=2
refuse "sits idle" "${SET[@]}" --set ingest-worker.replicaCount=13
refuse "additional properties" "${SET[@]}" --set gateway.nonsense=1
refuse "needs global.grpcTls.secretName" "${SET[@]}" --set global.grpcTls.enabled=true
echo "charts: lint, render and validation passed"
