{{/* What id-svc is, for the shared templates (see allezon-common's _workload.tpl). */}}
{{- define "id-svc.component" -}}
{{- toYaml (dict "binary" "id-svc" "grpc" true "grpcService" "allezon.v1.IdService" "store" true) -}}
{{- end -}}
