{{/*
The pods: a Deployment, or a StatefulSet when a pod needs a stable identity
(a worker's static membership) or its own data directory (a store service
on the embedded engine, without Aerospike).

`component` says what the binary is:
  binary       the command in the image
  grpc         serves gRPC: native gRPC probes on its service name
  grpcService  the name its health service reports
  http         serves the REST API: HTTP probes
  store        keeps a store: embedded (StatefulSet + volume) or Aerospike
  kafka        needs the brokers
  clients      calls the three services
  identity     needs a stable pod name (StatefulSet)
*/}}
{{- define "allezon.embedded" -}}
{{- $global := .Values.global | default dict -}}
{{- if (($global.aerospike | default dict).hosts) -}}false{{- else -}}true{{- end -}}
{{- end -}}

{{- define "allezon.stateful" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- if or $component.identity (and $component.store (eq (include "allezon.embedded" $ctx) "true")) -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{- define "allezon.workload" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- $stateful := eq (include "allezon.stateful" (list $ctx $component)) "true" -}}
{{- $values := $ctx.Values -}}
{{- if and $component.store (eq (include "allezon.embedded" $ctx) "true") (gt (int $values.replicaCount) 1) -}}
{{- fail (printf "%s: the embedded store lives in one pod's volume; set global.aerospike.hosts to run more than one replica" $ctx.Chart.Name) -}}
{{- end -}}
{{- if and $component.kafka (not (($values.global | default dict).kafka | default dict).brokers) -}}
{{- fail (printf "%s: set global.kafka.brokers (the Kafka bootstrap servers)" $ctx.Chart.Name) -}}
{{- end -}}
apiVersion: apps/v1
kind: {{ if $stateful }}StatefulSet{{ else }}Deployment{{ end }}
metadata:
  name: {{ include "allezon.fullname" $ctx }}
  labels:
    {{- include "allezon.labels" $ctx | nindent 4 }}
spec:
  {{- if not (and $values.autoscaling $values.autoscaling.enabled) }}
  replicas: {{ $values.replicaCount }}
  {{- end }}
  {{- if $stateful }}
  serviceName: {{ include "allezon.fullname" $ctx }}-headless
  # Each pod has its own identity or data and waits for no other.
  podManagementPolicy: Parallel
  {{- end }}
  selector:
    matchLabels:
      {{- include "allezon.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "allezon.selectorLabels" $ctx | nindent 8 }}
        app.kubernetes.io/part-of: allezon
      annotations:
        checksum/config: {{ include "allezon.env" (list $ctx $component) | sha256sum }}
        {{- if $values.metrics.podAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $values.ports.admin | quote }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- with $values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ $ctx.Chart.Name }}
          image: {{ include "allezon.image" $ctx | quote }}
          imagePullPolicy: {{ include "allezon.pullPolicy" $ctx }}
          command: [{{ $component.binary | quote }}]
          envFrom:
            - configMapRef:
                name: {{ include "allezon.fullname" $ctx }}
          {{- if or $component.identity $values.extraEnv }}
          env:
            {{- if $component.identity }}
            # The pod's stable name is the worker's static group membership:
            # a restarted pod takes its partitions back at once.
            - name: ALLEZON_KAFKA_INSTANCE_ID
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- end }}
            {{- with $values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- end }}
          ports:
            - name: admin
              containerPort: {{ $values.ports.admin }}
              protocol: TCP
            {{- if $component.grpc }}
            - name: grpc
              containerPort: {{ $values.ports.grpc }}
              protocol: TCP
            {{- end }}
            {{- if $component.http }}
            - name: http
              containerPort: {{ $values.ports.http }}
              protocol: TCP
            {{- end }}
          {{- /* The kubelet's gRPC probe speaks plain HTTP/2 only: with TLS
          on, the admin port's /healthz and /readyz answer the same
          questions. */}}
          {{- if and $component.grpc (ne (include "allezon.grpcTls" $ctx) "true") }}
          startupProbe:
            grpc:
              port: {{ $values.ports.grpc }}
            periodSeconds: 2
            failureThreshold: 150
          livenessProbe:
            grpc:
              port: {{ $values.ports.grpc }}
            periodSeconds: 10
            failureThreshold: 3
          readinessProbe:
            grpc:
              port: {{ $values.ports.grpc }}
              service: {{ $component.grpcService }}
            periodSeconds: 5
            failureThreshold: 2
          {{- else }}
          startupProbe:
            httpGet:
              path: /healthz
              port: admin
            periodSeconds: 2
            failureThreshold: 150
          livenessProbe:
            httpGet:
              path: /healthz
              port: admin
            periodSeconds: 10
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: {{ $component.readyz | default "/readyz" }}
              port: admin
            periodSeconds: 5
            failureThreshold: 2
          {{- end }}
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- toYaml $values.securityContext | nindent 12 }}
          volumeMounts:
            # The root file system is read-only; the embedded engine writes
            # under /data and nothing else writes at all, but a few libraries
            # want a writable /tmp.
            - name: tmp
              mountPath: /tmp
            {{- if eq (include "allezon.grpcTls" $ctx) "true" }}
            - name: grpc-tls
              mountPath: /etc/allezon/grpc-tls
              readOnly: true
            {{- end }}
            {{- if and $component.store (eq (include "allezon.embedded" $ctx) "true") }}
            - name: data
              mountPath: /data
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- if eq (include "allezon.grpcTls" $ctx) "true" }}
        - name: grpc-tls
          secret:
            secretName: {{ $ctx.Values.global.grpcTls.secretName }}
            defaultMode: 0440
        {{- end }}
      {{- with $values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
  {{- if and $component.store (eq (include "allezon.embedded" $ctx) "true") }}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: ["ReadWriteOnce"]
        {{- with $values.persistence.storageClassName }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ $values.persistence.size }}
  {{- end }}
{{- end -}}
