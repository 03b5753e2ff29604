{{/* What profile-svc is, for the shared templates (see allezon-common's _workload.tpl). */}}
{{- define "profile-svc.component" -}}
{{- toYaml (dict "binary" "profile-svc" "grpc" true "grpcService" "allezon.v1.ProfileService" "store" true) -}}
{{- end -}}
