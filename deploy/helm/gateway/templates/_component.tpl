{{/* What gateway is, for the shared templates (see allezon-common's _workload.tpl). */}}
{{- define "gateway.component" -}}
{{- toYaml (dict "binary" "gateway" "http" true "kafka" true "clients" true) -}}
{{- end -}}
