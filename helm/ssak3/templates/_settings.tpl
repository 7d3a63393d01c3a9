{{/* The settings every service reads, as SSAK3_* variables (ConfigMap data). */}}
{{- define "ssak3.settings" -}}
SSAK3_LOG_FORMAT: {{ .Values.config.logFormat | quote }}
SSAK3_PRICES__STANDARD: {{ .Values.config.prices.standard | quote }}
SSAK3_PRICES__DEEP: {{ .Values.config.prices.deep | quote }}
SSAK3_PRICES__MOVE_OUT: {{ .Values.config.prices.moveOut | quote }}
{{- if and .Values.auth.jwksUrl .Values.auth.jwks }}
{{- fail "set auth.jwksUrl or auth.jwks, not both" }}
{{- end }}
{{- /* Quoted for the services' settings parser, which would read 12345 as a number. */}}
SSAK3_AUTH__ISSUER: {{ .Values.auth.issuer | toJson | quote }}
{{- with .Values.auth.audience }}
SSAK3_AUTH__AUDIENCE: {{ . | toJson | quote }}
{{- end }}
SSAK3_AUTH__MAX_TOKEN_LIFETIME_SECS: {{ .Values.auth.maxTokenLifetimeSeconds | quote }}
{{- if .Values.auth.jwksUrl }}
SSAK3_AUTH__JWKS_URL: {{ .Values.auth.jwksUrl | quote }}
{{- else if .Values.auth.jwks }}
SSAK3_AUTH__JWKS: |
  {{- .Values.auth.jwks | trim | nindent 2 }}
{{- else }}
SSAK3_AUTH__JWKS_FILE: /etc/ssak3/issuer/ssak3-issuer.crt
{{- end }}
{{- with .Values.companies }}
SSAK3_COMPANIES: >-
  {{- include "ssak3.companies" $ | nindent 2 }}
{{- end }}
SSAK3_PAYMENT_ENDPOINT: {{ printf "http://%s-payment:%v" .Release.Name .Values.services.payment.port | quote }}
SSAK3_PAYMENT_CLIENT__TIMEOUT_MS: {{ .Values.config.paymentClient.timeoutMs | quote }}
SSAK3_PAYMENT_CLIENT__CONCURRENCY_LIMIT: {{ .Values.config.paymentClient.concurrencyLimit | quote }}
SSAK3_PAYMENT_CLIENT__RETRY_AFTER_MS: {{ .Values.config.paymentClient.retryAfterMs | quote }}
SSAK3_PAYMENT_CLIENT__BREAKER__FAILURE_RATE: {{ .Values.config.paymentClient.breaker.failureRate | quote }}
SSAK3_PAYMENT_CLIENT__BREAKER__WINDOW_MS: {{ .Values.config.paymentClient.breaker.windowMs | quote }}
SSAK3_PAYMENT_CLIENT__BREAKER__MINIMUM_CALLS: {{ .Values.config.paymentClient.breaker.minimumCalls | quote }}
SSAK3_PAYMENT_CLIENT__BREAKER__OPEN_MS: {{ .Values.config.paymentClient.breaker.openMs | quote }}
SSAK3_PAYMENT_CLIENT__BREAKER__HALF_OPEN_CALLS: {{ .Values.config.paymentClient.breaker.halfOpenCalls | quote }}
SSAK3_RECONCILE__PENDING_TIMEOUT_MS: {{ .Values.config.reconcile.pendingTimeoutMs | quote }}
SSAK3_RECONCILE__INTERVAL_MS: {{ .Values.config.reconcile.intervalMs | quote }}
SSAK3_EVENTS__NAMESPACE: {{ .Values.config.events.namespace | quote }}
SSAK3_EVENTS__PREFETCH: {{ .Values.config.events.prefetch | quote }}
SSAK3_EVENTS__MAX_DELIVERIES: {{ .Values.config.events.maxDeliveries | quote }}
{{- with .Values.config.notify.webhookUrl }}
SSAK3_NOTIFY__WEBHOOK_URL: {{ . | quote }}
{{- end }}
{{- with .Values.tracing.otlpEndpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
{{- with .Values.tracing.environment }}
SSAK3_DEPLOYMENT_ENVIRONMENT: {{ . | quote }}
{{- end }}
SSAK3_DRAIN_DELAY_MS: {{ mul .Values.shutdown.drainDelaySeconds 1000 | quote }}
SSAK3_SHUTDOWN_GRACE_MS: {{ mul .Values.shutdown.graceSeconds 1000 | quote }}
{{- end -}}

{{/* values.companies as the TOML list SSAK3_COMPANIES takes. */}}
{{- define "ssak3.companies" -}}
{{- $entries := list -}}
{{- range .Values.companies -}}
{{- $entries = append $entries (printf "{company_id=%s, display_name=%s}" (toJson .id) (toJson .name)) -}}
{{- end -}}
[{{ join ",\n" $entries }}]
{{- end -}}
