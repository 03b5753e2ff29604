{{/* The ConfigMap of the process's environment; its hash rolls the pods. */}}
{{- define "allezon.configmap" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "allezon.fullname" $ctx }}
  labels:
    {{- include "allezon.labels" $ctx | nindent 4 }}
data:
  {{- include "allezon.env" (list $ctx $component) | nindent 2 }}
{{- end -}}
