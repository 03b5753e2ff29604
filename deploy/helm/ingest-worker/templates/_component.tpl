{{/* What ingest-worker is, for the shared templates (see allezon-common's _workload.tpl). */}}
{{- define "ingest-worker.component" -}}
{{- toYaml (dict "binary" "ingest-worker" "kafka" true "clients" true "identity" true) -}}
{{- end -}}
