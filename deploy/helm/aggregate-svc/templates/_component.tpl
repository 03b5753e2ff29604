{{/* What aggregate-svc is, for the shared templates (see allezon-common's _workload.tpl). */}}
{{- define "aggregate-svc.component" -}}
{{- toYaml (dict "binary" "aggregate-svc" "grpc" true "grpcService" "allezon.v1.AggregateService" "store" true) -}}
{{- end -}}
