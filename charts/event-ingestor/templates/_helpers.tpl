{{/* Names, labels and the few derived values every template shares. */}}

{{- define "event-ingestor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "event-ingestor.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "event-ingestor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "event-ingestor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "event-ingestor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "event-ingestor.labels" -}}
helm.sh/chart: {{ include "event-ingestor.chart" . }}
{{ include "event-ingestor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: event-ingestor
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "event-ingestor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "event-ingestor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "event-ingestor.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* KAFKA_BROKERS: the value is a string or a list of host:port. */}}
{{- define "event-ingestor.brokers" -}}
{{- if kindIs "slice" .Values.kafka.brokers }}
{{- join "," .Values.kafka.brokers }}
{{- else }}
{{- .Values.kafka.brokers }}
{{- end }}
{{- end }}

{{- define "event-ingestor.kafkaTls" -}}
{{- if or .Values.kafka.tls.enabled .Values.kafka.tls.existingSecret }}true{{ end }}
{{- end }}

{{/* librdkafka security.protocol: explicit, or derived from whether SASL and TLS are configured. */}}
{{- define "event-ingestor.securityProtocol" -}}
{{- $tls := include "event-ingestor.kafkaTls" . }}
{{- if .Values.kafka.securityProtocol }}
{{- .Values.kafka.securityProtocol }}
{{- else if and .Values.kafka.sasl.existingSecret $tls }}SASL_SSL
{{- else if .Values.kafka.sasl.existingSecret }}SASL_PLAINTEXT
{{- else if $tls }}SSL
{{- end }}
{{- end }}

{{/* The number of pods that always run: the autoscaler's floor, or replicaCount. */}}
{{- define "event-ingestor.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}
{{- .Values.autoscaling.minReplicas }}
{{- else if .Values.keda.enabled }}
{{- .Values.keda.minReplicas }}
{{- else }}
{{- .Values.replicaCount }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop sleep runs first, then SIGTERM starts the service's drain
(SHUTDOWN_DRAIN_DELAY of serving with readiness 503, then SHUTDOWN_TIMEOUT to finish and flush); the
margin keeps the kubelet's SIGKILL clear of a drain that uses its whole budget.
*/}}
{{- define "event-ingestor.terminationGracePeriodSeconds" -}}
{{- $s := .Values.shutdown }}
{{- add $s.preStopSleepSeconds $s.drainDelaySeconds $s.timeoutSeconds $s.marginSeconds }}
{{- end }}

{{/* A value as an environment string; whole numbers print without an exponent (YAML numbers are floats). */}}
{{- define "event-ingestor.string" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) }}
{{- . | int64 | toString }}
{{- else }}
{{- . | toString }}
{{- end }}
{{- end }}

{{- define "event-ingestor.tlsMountPath" -}}/etc/event-ingestor/kafka-tls{{- end }}
{{- define "event-ingestor.apiKeysMountPath" -}}/etc/event-ingestor/api-keys{{- end }}
{{- define "event-ingestor.spoolPath" -}}/var/lib/event-ingestor/spool{{- end }}
{{- define "event-ingestor.caBundle" -}}/etc/ssl/certs/ca-certificates.crt{{- end }}

{{/*
The non-secret settings, as the environment the binary reads (rendered into the ConfigMap). Secrets
never appear here: they are secretKeyRefs in the Deployment.
*/}}
{{- define "event-ingestor.settings" -}}
{{- $v := .Values }}
{{- $env := dict
  "HTTP_PORT" ($v.ports.http | int64 | toString)
  "ADMIN_PORT" ($v.ports.admin | int64 | toString)
  "LOG_LEVEL" $v.logLevel
  "KAFKA_BROKERS" (include "event-ingestor.brokers" .)
  "KAFKA_TOPIC" $v.kafka.topic
  "KAFKA_DLQ_TOPIC" $v.kafka.dlqTopic
  "ACK_MODE" $v.ingest.ackMode
  "QUEUE_SIZE" ($v.ingest.queueSize | int64 | toString)
  "QUEUE_MAX_BYTES" ($v.ingest.queueMaxBytes | int64 | toString)
  "WORKER_POOL_SIZE" ($v.ingest.workerPoolSize | int64 | toString)
  "RATE_LIMIT_RPS" ($v.ingest.rateLimitRps | int64 | toString)
  "RATE_LIMIT_BURST" ($v.ingest.rateLimitBurst | int64 | toString)
  "SHUTDOWN_DRAIN_DELAY" (printf "%ds" (int $v.shutdown.drainDelaySeconds))
  "SHUTDOWN_TIMEOUT" (printf "%ds" (int $v.shutdown.timeoutSeconds))
}}
{{- $protocol := include "event-ingestor.securityProtocol" . }}
{{- if $protocol }}
{{- $_ := set $env "KAFKA_PROPERTY_SECURITY_PROTOCOL" $protocol }}
{{- end }}
{{- if $v.kafka.sasl.existingSecret }}
{{- $_ := set $env "KAFKA_PROPERTY_SASL_MECHANISM" $v.kafka.sasl.mechanism }}
{{- end }}
{{- if include "event-ingestor.kafkaTls" . }}
{{- $dir := include "event-ingestor.tlsMountPath" . }}
{{- if and $v.kafka.tls.existingSecret $v.kafka.tls.caKey }}
{{- $_ := set $env "KAFKA_PROPERTY_SSL_CA_LOCATION" (printf "%s/%s" $dir $v.kafka.tls.caKey) }}
{{- else }}
{{- $_ := set $env "KAFKA_PROPERTY_SSL_CA_LOCATION" (include "event-ingestor.caBundle" .) }}
{{- end }}
{{- if and $v.kafka.tls.existingSecret $v.kafka.tls.certKey }}
{{- $_ := set $env "KAFKA_PROPERTY_SSL_CERTIFICATE_LOCATION" (printf "%s/%s" $dir $v.kafka.tls.certKey) }}
{{- end }}
{{- if and $v.kafka.tls.existingSecret $v.kafka.tls.keyKey }}
{{- $_ := set $env "KAFKA_PROPERTY_SSL_KEY_LOCATION" (printf "%s/%s" $dir $v.kafka.tls.keyKey) }}
{{- end }}
{{- end }}
{{- range $name, $value := $v.kafka.properties }}
{{- $key := printf "KAFKA_PROPERTY_%s" ($name | replace "." "_" | upper) }}
{{- if hasKey $env $key }}
{{- fail (printf "kafka.properties.%s is set by the chart from other values; change those instead" $name) }}
{{- end }}
{{- $_ := set $env $key (include "event-ingestor.string" $value) }}
{{- end }}
{{- $_ := set $env "SPOOL_DIR" (include "event-ingestor.spoolPath" .) }}
{{- $_ := set $env "SPOOL_MAX_BYTES" ($v.spool.maxBytes | int64 | toString) }}
{{- if $v.apiKeys.existingSecret }}
{{- $_ := set $env "API_KEYS_FILE" (printf "%s/%s" (include "event-ingestor.apiKeysMountPath" .) $v.apiKeys.key) }}
{{- end }}
{{- if $v.tracing.enabled }}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" $v.tracing.endpoint }}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_PROTOCOL" $v.tracing.protocol }}
{{- $_ := set $env "OTEL_SERVICE_NAME" $v.tracing.serviceName }}
{{- $_ := set $env "OTEL_TRACES_SAMPLER" $v.tracing.sampler }}
{{- $_ := set $env "OTEL_TRACES_SAMPLER_ARG" $v.tracing.samplerArg }}
{{- $_ := set $env "OTEL_RESOURCE_ATTRIBUTES" (printf "service.version=%s,k8s.namespace.name=%s,k8s.deployment.name=%s" .Chart.AppVersion .Release.Namespace (include "event-ingestor.fullname" .)) }}
{{- end }}
{{- range $name, $value := $v.config }}
{{- if hasKey $env $name }}
{{- fail (printf "config.%s is set by the chart from other values; change those instead" $name) }}
{{- end }}
{{- $_ := set $env $name (include "event-ingestor.string" $value) }}
{{- end }}
{{- toYaml $env }}
{{- end }}
