{{/*
Names and labels, the conventional way: fullname is the release name when it
already holds the chart's name (a release per service, `helm install
profile-svc ./profile-svc`), else "<release>-<chart>" (the umbrella).
*/}}
{{- define "allezon.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "allezon.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "allezon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "allezon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "allezon.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "allezon.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .Chart.Name }}
app.kubernetes.io/part-of: allezon
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The image: the chart's own value, else the global one. */}}
{{- define "allezon.image" -}}
{{- $global := (.Values.global | default dict).image | default dict -}}
{{- $repository := .Values.image.repository | default $global.repository -}}
{{- $tag := .Values.image.tag | default $global.tag | default .Chart.AppVersion -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}

{{- define "allezon.pullPolicy" -}}
{{- $global := (.Values.global | default dict).image | default dict -}}
{{- .Values.image.pullPolicy | default $global.pullPolicy | default "IfNotPresent" -}}
{{- end -}}

{{/*
Where another service of the same release answers gRPC: the global value
when set (separate releases, or a service on another port), else
"<release>-<chart>" on the charts' default gRPC port (the umbrella).
*/}}
{{- define "allezon.endpoint" -}}
{{- $ctx := index . 0 -}}
{{- $chart := index . 1 -}}
{{- $key := index . 2 -}}
{{- $services := ($ctx.Values.global | default dict).services | default dict -}}
{{- $explicit := index $services $key | default "" -}}
{{- if $explicit -}}
{{- $explicit -}}
{{- else -}}
{{- printf "%s://%s-%s:50051" (ternary "https" "http" (eq (include "allezon.grpcTls" $ctx) "true")) $ctx.Release.Name $chart -}}
{{- end -}}
{{- end -}}

{{/*
The process's environment, by flag name: a value `kafkaLingerMs: 5` is the
flag `--kafka-linger-ms 5`, that is `ALLEZON_KAFKA_LINGER_MS=5`. Globals come
first; the chart's `config` overrides them.
*/}}
{{/*
"true" when the internal gRPC traffic is TLS (global.grpcTls.enabled). The
Secret (global.grpcTls.secretName, as cert-manager writes them: tls.crt,
tls.key, ca.crt) is mounted at /etc/allezon/grpc-tls in every pod.
*/}}
{{- define "allezon.grpcTls" -}}
{{- $tls := (($.Values.global | default dict).grpcTls | default dict) -}}
{{- if $tls.enabled -}}
{{- if not $tls.secretName -}}
{{- fail "global.grpcTls.enabled needs global.grpcTls.secretName (a Secret with tls.crt, tls.key and ca.crt)" -}}
{{- end -}}
true
{{- else -}}
false
{{- end -}}
{{- end -}}

{{- define "allezon.env" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- $global := $ctx.Values.global | default dict -}}
{{- $env := dict -}}
{{- $_ := set $env "ALLEZON_ADMIN_ADDR" (printf "0.0.0.0:%v" $ctx.Values.ports.admin) -}}
{{- if $component.grpc -}}
{{- $_ := set $env "ALLEZON_GRPC_ADDR" (printf "0.0.0.0:%v" $ctx.Values.ports.grpc) -}}
{{- end -}}
{{- if $component.http -}}
{{- $_ := set $env "ALLEZON_HTTP_ADDR" (printf "0.0.0.0:%v" $ctx.Values.ports.http) -}}
{{- end -}}
{{- if $component.store -}}
{{- $_ := set $env "ALLEZON_DATA_DIR" "/data" -}}
{{- with $global.aerospike -}}
{{- if .hosts -}}
{{- $_ := set $env "ALLEZON_AEROSPIKE_HOSTS" .hosts -}}
{{- $_ := set $env "ALLEZON_AEROSPIKE_NAMESPACE" (.namespace | default "allezon") -}}
{{- $_ := set $env "ALLEZON_AEROSPIKE_SET_PREFIX" (.setPrefix | default "") -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $component.kafka -}}
{{- with $global.kafka -}}
{{- $_ := set $env "ALLEZON_KAFKA_BROKERS" .brokers -}}
{{- $_ := set $env "ALLEZON_KAFKA_TOPIC" (.topic | default "user-tags") -}}
{{- end -}}
{{- end -}}
{{- if eq (include "allezon.grpcTls" $ctx) "true" -}}
{{- $mutual := $global.grpcTls.mutual -}}
{{- if $component.grpc -}}
{{- $_ := set $env "ALLEZON_GRPC_TLS_CERT" "/etc/allezon/grpc-tls/tls.crt" -}}
{{- $_ := set $env "ALLEZON_GRPC_TLS_KEY" "/etc/allezon/grpc-tls/tls.key" -}}
{{- if $mutual -}}
{{- $_ := set $env "ALLEZON_GRPC_TLS_CLIENT_CA" "/etc/allezon/grpc-tls/ca.crt" -}}
{{- end -}}
{{- end -}}
{{- if $component.clients -}}
{{- $_ := set $env "ALLEZON_GRPC_TLS_CA" "/etc/allezon/grpc-tls/ca.crt" -}}
{{- if $mutual -}}
{{- $_ := set $env "ALLEZON_GRPC_TLS_CLIENT_CERT" "/etc/allezon/grpc-tls/tls.crt" -}}
{{- $_ := set $env "ALLEZON_GRPC_TLS_CLIENT_KEY" "/etc/allezon/grpc-tls/tls.key" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $component.clients -}}
{{- $_ := set $env "ALLEZON_PROFILE_SVC" (include "allezon.endpoint" (list $ctx "profile-svc" "profileSvc")) -}}
{{- $_ := set $env "ALLEZON_AGGREGATE_SVC" (include "allezon.endpoint" (list $ctx "aggregate-svc" "aggregateSvc")) -}}
{{- $_ := set $env "ALLEZON_ID_SVC" (include "allezon.endpoint" (list $ctx "id-svc" "idSvc")) -}}
{{- end -}}
{{- $_ := set $env "RUST_LOG" ($global.logLevel | default "info") -}}
{{- $_ := set $env "ALLEZON_LOG_FORMAT" ($global.logFormat | default "text") -}}
{{- with $global.otlp -}}
{{- if .endpoint -}}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" .endpoint -}}
{{- $_ := set $env "OTEL_TRACES_SAMPLER" (.sampler | default "parentbased_traceidratio") -}}
{{- $_ := set $env "OTEL_TRACES_SAMPLER_ARG" (.samplerArg | default "1.0" | toString) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $env "OTEL_SERVICE_NAME" $component.binary -}}
{{- range $key, $value := $ctx.Values.config -}}
{{- $_ := set $env (printf "ALLEZON_%s" ($key | snakecase | upper)) ($value | toString) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}
