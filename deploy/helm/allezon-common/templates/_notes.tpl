{{- define "allezon.notes" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- $name := include "allezon.fullname" $ctx -}}
{{ $ctx.Chart.Name }} is installed as {{ $name }} in {{ $ctx.Release.Namespace }}.
{{- if $component.http }}

The REST API (POST /user_tags, /user_profiles/{cookie}, /aggregates):
  kubectl -n {{ $ctx.Release.Namespace }} port-forward svc/{{ $name }}-http 8080:{{ $ctx.Values.service.port }}
  curl -X POST 'localhost:8080/aggregates?time_range=2022-03-01T00:00:00_2022-03-01T00:01:00&action=VIEW&aggregates=COUNT'
{{- end }}
{{- if $component.grpc }}

gRPC ({{ $component.grpcService }}, with reflection and health), in the cluster only:
  kubectl -n {{ $ctx.Release.Namespace }} port-forward svc/{{ $name }} 50051:{{ $ctx.Values.ports.grpc }}
  grpcurl -plaintext localhost:50051 list
{{- end }}
{{- if $component.store }}
{{- if eq (include "allezon.embedded" $ctx) "true" }}

Store: embedded, on the pod's volume (one replica). Set global.aerospike.hosts
to use Aerospike and run several.
{{- else }}

Store: Aerospike at {{ $ctx.Values.global.aerospike.hosts }}, namespace {{ $ctx.Values.global.aerospike.namespace }}.
{{- end }}
{{- end }}
{{- if $component.identity }}

Each worker pod's name is its static Kafka group membership. Workers beyond
the topic's partitions ({{ $ctx.Values.global.kafka.partitions }}) would get no partition and sit idle, so
the chart refuses more replicas (or autoscaling.maxReplicas) than that.
{{- end }}

Admin port {{ $ctx.Values.ports.admin }} (ClusterIP): /healthz, /readyz, /metrics (Prometheus).
Check the release with: helm test {{ $ctx.Release.Name }} -n {{ $ctx.Release.Namespace }}
{{- end -}}
