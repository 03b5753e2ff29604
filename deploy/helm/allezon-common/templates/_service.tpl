{{/*
The Service: ClusterIP for gRPC and admin (internal ports never leave the
cluster); only the gateway's HTTP Service has a configurable type. A
StatefulSet also gets the headless Service its pods' names resolve in.
*/}}
{{- define "allezon.service" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- $values := $ctx.Values -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "allezon.fullname" $ctx }}
  labels:
    {{- include "allezon.labels" $ctx | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "allezon.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: admin
      port: {{ $values.ports.admin }}
      targetPort: admin
      protocol: TCP
    {{- if $component.grpc }}
    - name: grpc
      port: {{ $values.ports.grpc }}
      targetPort: grpc
      protocol: TCP
      appProtocol: kubernetes.io/h2c
    {{- end }}
{{- if $component.http }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "allezon.fullname" $ctx }}-http
  labels:
    {{- include "allezon.labels" $ctx | nindent 4 }}
  {{- with $values.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $values.service.type }}
  selector:
    {{- include "allezon.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: http
      port: {{ $values.service.port }}
      targetPort: http
      protocol: TCP
{{- end }}
{{- if eq (include "allezon.stateful" (list $ctx $component)) "true" }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "allezon.fullname" $ctx }}-headless
  labels:
    {{- include "allezon.labels" $ctx | nindent 4 }}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    {{- include "allezon.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: admin
      port: {{ $values.ports.admin }}
      targetPort: admin
{{- end }}
{{- end -}}
