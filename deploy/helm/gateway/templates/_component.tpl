{{/* What gateway is, for the shared templates (see allezon-common's _workload.tpl). */}}
{{- define "gateway.component" -}}
{{- /* The readiness probe leaves out the services behind the gateway: while
one is down the gateway still takes tags (the log is their only write) and
answers that service's queries 503 at once, which it could not do from
outside the Service's endpoints. Its /readyz alone still says it. */ -}}
{{- toYaml (dict "binary" "gateway" "http" true "kafka" true "clients" true "readyz" "/readyz?exclude=profile-svc,aggregate-svc,id-svc") -}}
{{- end -}}
