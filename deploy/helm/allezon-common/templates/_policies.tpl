{{/* A PodDisruptionBudget, behind `podDisruptionBudget.enabled`. */}}
{{- define "allezon.pdb" -}}
{{- if .Values.podDisruptionBudget.enabled -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "allezon.fullname" . }}
  labels:
    {{- include "allezon.labels" . | nindent 4 }}
spec:
  {{- if hasKey .Values.podDisruptionBudget "minAvailable" }}
  minAvailable: {{ .Values.podDisruptionBudget.minAvailable }}
  {{- else }}
  maxUnavailable: {{ .Values.podDisruptionBudget.maxUnavailable | default 1 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "allezon.selectorLabels" . | nindent 6 }}
{{- end -}}
{{- end -}}

{{/*
A HorizontalPodAutoscaler, behind `autoscaling.enabled`, for the charts
that offer one (the gateway and the workers). `kind` is the workload's.
*/}}
{{- define "allezon.hpa" -}}
{{- $ctx := index . 0 -}}
{{- $kind := index . 1 -}}
{{- with $ctx.Values.autoscaling -}}
{{- if .enabled -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "allezon.fullname" $ctx }}
  labels:
    {{- include "allezon.labels" $ctx | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: {{ $kind }}
    name: {{ include "allezon.fullname" $ctx }}
  minReplicas: {{ .minReplicas }}
  maxReplicas: {{ .maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .targetCPUUtilizationPercentage }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A prometheus-operator ServiceMonitor, behind `metrics.serviceMonitor.enabled`. */}}
{{- define "allezon.servicemonitor" -}}
{{- with .Values.metrics.serviceMonitor -}}
{{- if .enabled -}}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "allezon.fullname" $ }}
  labels:
    {{- include "allezon.labels" $ | nindent 4 }}
    {{- with .labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "allezon.selectorLabels" $ | nindent 6 }}
  endpoints:
    - port: admin
      path: /metrics
      interval: {{ .interval }}
      scrapeTimeout: {{ .scrapeTimeout }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The `helm test` pod: the release answers. `check` is a shell command run
in the test image (busybox by default) with SVC set to the Service's name
and ADMIN_PORT to its admin port.
*/}}
{{- define "allezon.testpod" -}}
{{- $ctx := index . 0 -}}
{{- $check := index . 1 -}}
apiVersion: v1
kind: Pod
metadata:
  name: {{ include "allezon.fullname" $ctx }}-test
  labels:
    {{- include "allezon.labels" $ctx | nindent 4 }}
  annotations:
    helm.sh/hook: test
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 65534
    runAsGroup: 65534
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: check
      image: {{ $ctx.Values.tests.image | quote }}
      command: ["sh", "-ec", {{ $check | quote }}]
      env:
        - name: SVC
          value: {{ include "allezon.fullname" $ctx }}
        - name: ADMIN_PORT
          value: {{ $ctx.Values.ports.admin | quote }}
      resources:
        requests:
          cpu: 10m
          memory: 16Mi
        limits:
          cpu: 100m
          memory: 32Mi
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities:
          drop: ["ALL"]
{{- end -}}
