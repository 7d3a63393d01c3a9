{{/* Release-scoped name of one component: <release>-<service>. */}}
{{- define "ssak3.name" -}}
{{- printf "%s-%s" .root.Release.Name .service | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ssak3.labels" -}}
app.kubernetes.io/name: {{ .service }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/part-of: ssak3
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "ssak3.selectorLabels" -}}
app.kubernetes.io/name: {{ .service }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* The image every Ssak3 container runs. */}}
{{- define "ssak3.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The release's own Secret: credentials given as values or generated. */}}
{{- define "ssak3.secretName" -}}
{{- printf "%s-ssak3" .Release.Name -}}
{{- end -}}

{{/* The release's keys Secret: reservation's key pair and the evaluation issuer's. */}}
{{- define "ssak3.keysSecretName" -}}
{{- printf "%s-ssak3-keys" .Release.Name -}}
{{- end -}}

{{/* "true" when the release makes its own (evaluation) issuer: no identity provider is configured. */}}
{{- define "ssak3.evaluationIssuer" -}}
{{- if not (or .Values.auth.jwksUrl .Values.auth.jwks) }}true{{ end -}}
{{- end -}}

{{/* Where reservation's key pair is: the operator's Secret, or the release's keys Secret. */}}
{{- define "ssak3.serviceKeysSecretName" -}}
{{- default (include "ssak3.keysSecretName" .) .Values.auth.serviceKeys.existingSecret -}}
{{- end -}}

{{/*
The key pairs the chart makes, as the keys Secret's data: the ones already
installed (kept on upgrades), or new ones. A P-256 key (SEC1 PEM) and a
self-signed certificate whose common name names the key: "reservation" for
reservation's own key, "ssak3-issuer" for the evaluation issuer's. Computed
once per render.
*/}}
{{- define "ssak3.keys" -}}
{{- if not (hasKey .Values "__keys") -}}
{{- $installed := lookup "v1" "Secret" .Release.Namespace (include "ssak3.keysSecretName" .) | dig "data" (dict) -}}
{{- $keys := dict -}}
{{- $pairs := list -}}
{{- if not .Values.auth.serviceKeys.existingSecret }}{{ $pairs = append $pairs "reservation" }}{{ end -}}
{{- if include "ssak3.evaluationIssuer" . }}{{ $pairs = append $pairs "issuer" }}{{ end -}}
{{- range $pairs -}}
{{- $key := get $installed (printf "%s-key.pem" .) | default "" | b64dec -}}
{{- $cert := get $installed (printf "%s.crt" .) | default "" | b64dec -}}
{{- if not (and $key $cert) -}}
{{- $key = genPrivateKey "ecdsa" -}}
{{- $cert = (genSelfSignedCertWithKey (ternary "reservation" "ssak3-issuer" (eq . "reservation")) nil nil 3650 $key).Cert -}}
{{- end -}}
{{- $_ := set $keys (printf "%s-key.pem" .) $key -}}
{{- $_ := set $keys (printf "%s.crt" .) $cert -}}
{{- end -}}
{{- $_ := set .Values "__keys" $keys -}}
{{- end -}}
{{- toJson (get .Values "__keys") -}}
{{- end -}}

{{/* The SPIFFE principal of a component's account, as Istio authorization sees it. */}}
{{- define "ssak3.principal" -}}
{{- printf "cluster.local/ns/%s/sa/%s" .root.Release.Namespace (include "ssak3.name" .) -}}
{{- end -}}

{{/* Seconds the kubelet waits before killing a pod: see values.shutdown. */}}
{{- define "ssak3.terminationGrace" -}}
{{- add .Values.shutdown.preStopSeconds .Values.shutdown.drainDelaySeconds .Values.shutdown.graceSeconds 5 -}}
{{- end -}}

{{/*
Passwords the chart makes: the one already installed (kept on upgrades), or a
new one. Computed once per render and shared by every template that needs it,
so the bundled server and its clients get the same. Returns a dict:
postgresql, rabbitmq, webhook (notify's webhook signing secret).
*/}}
{{- define "ssak3.generated" -}}
{{- if not (hasKey .Values "__generated") -}}
{{- $pg := .Values.postgresql.bundled.password -}}
{{- if not $pg -}}
{{- $pg = lookup "v1" "Secret" .Release.Namespace (printf "%s-postgresql" .Release.Name) | dig "data" "password" "" | b64dec | default (randAlphaNum 32) -}}
{{- end -}}
{{- $mq := .Values.rabbitmq.bundled.password -}}
{{- if not $mq -}}
{{- $mq = lookup "v1" "Secret" .Release.Namespace (printf "%s-rabbitmq" .Release.Name) | dig "data" "password" "" | b64dec | default (randAlphaNum 32) -}}
{{- end -}}
{{- $webhook := .Values.config.notify.webhookSecret -}}
{{- if not $webhook -}}
{{- $webhook = lookup "v1" "Secret" .Release.Namespace (include "ssak3.secretName" .) | dig "data" "webhook-secret" "" | b64dec | default (printf "whsec_%s" (randAlphaNum 32 | b64enc)) -}}
{{- end -}}
{{- $_ := set .Values "__generated" (dict "postgresql" $pg "rabbitmq" $mq "webhook" $webhook) -}}
{{- end -}}
{{- toJson (get .Values "__generated") -}}
{{- end -}}

{{/* PostgreSQL: host, port, user of the server the services use. */}}
{{- define "ssak3.postgresql.server" -}}
{{- $pg := .Values.postgresql -}}
{{- if $pg.external.enabled -}}
{{- toJson (dict "host" (required "postgresql.external.host is needed when postgresql.external.enabled" $pg.external.host) "port" $pg.external.port "user" $pg.external.user "sslmode" $pg.external.sslmode) -}}
{{- else -}}
{{- toJson (dict "host" (printf "%s-postgresql" .Release.Name) "port" 5432 "user" $pg.bundled.user "sslmode" "prefer") -}}
{{- end -}}
{{- end -}}

{{/* The database URL of one service (no password: that is PGPASSWORD). */}}
{{- define "ssak3.databaseUrl" -}}
{{- $s := include "ssak3.postgresql.server" .root | fromJson -}}
{{- printf "postgres://%s@%s:%v/%s_%s?sslmode=%s" ($s.user | urlquery) $s.host $s.port .root.Values.postgresql.database .service $s.sslmode -}}
{{- end -}}

{{/* Where PGPASSWORD comes from: {name, key}, or {} when there is no password. */}}
{{- define "ssak3.postgresql.passwordRef" -}}
{{- $pg := .root.Values.postgresql -}}
{{- if not $pg.external.enabled -}}
{{- toJson (dict "name" (printf "%s-postgresql" .root.Release.Name) "key" "password") -}}
{{- else if $pg.external.existingSecret -}}
{{- toJson (dict "name" $pg.external.existingSecret "key" $pg.external.existingSecretKey) -}}
{{- else if $pg.external.password -}}
{{- toJson (dict "name" (default (include "ssak3.secretName" .root) .secret) "key" "postgresql-password") -}}
{{- else -}}
{{- toJson dict -}}
{{- end -}}
{{- end -}}

{{/* Where SSAK3_AMQP_URL comes from: {name, key}. */}}
{{- define "ssak3.amqpUrlRef" -}}
{{- $mq := .Values.rabbitmq.external -}}
{{- if and $mq.enabled $mq.existingSecret -}}
{{- toJson (dict "name" $mq.existingSecret "key" $mq.existingSecretKey) -}}
{{- else -}}
{{- toJson (dict "name" (include "ssak3.secretName" .) "key" "amqp-url") -}}
{{- end -}}
{{- end -}}

{{/* The broker URL, when the chart composes it. */}}
{{- define "ssak3.amqpUrl" -}}
{{- $mq := .Values.rabbitmq -}}
{{- if $mq.external.enabled -}}
{{- printf "amqp://%s:%s@%s:%v/%s" ($mq.external.user | urlquery) ($mq.external.password | urlquery) (required "rabbitmq.external.host is needed when rabbitmq.external.enabled" $mq.external.host) $mq.external.port ($mq.vhost | urlquery) -}}
{{- else -}}
{{- $gen := include "ssak3.generated" . | fromJson -}}
{{- printf "amqp://%s:%s@%s-rabbitmq:5672/%s" ($mq.bundled.user | urlquery) ($gen.rabbitmq | urlquery) .Release.Name ($mq.vhost | urlquery) -}}
{{- end -}}
{{- end -}}

{{/*
What `ssak3 migrate SERVICE` needs, the same as the service gets: the
database URL and password. Used by the service container, its init container
and the migration Job. ctx: root, service, secret (the Secret holding a
values-given PostgreSQL password; default the release's).
*/}}
{{- define "ssak3.databaseEnv" -}}
- name: SSAK3_DATABASE_URL
  value: {{ include "ssak3.databaseUrl" . | quote }}
{{- $ref := include "ssak3.postgresql.passwordRef" . | fromJson }}
{{- if $ref }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $ref.name }}, key: {{ $ref.key }}}
{{- end }}
{{- end -}}

{{/* The operator's extra env entries for one service (global, then the service's). */}}
{{- define "ssak3.extraEnv" -}}
{{- $entries := concat .root.Values.extraEnv (index .root.Values.services .service).extraEnv -}}
{{- with $entries }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{/* Pod annotations every pod of the release carries. */}}
{{- define "ssak3.podAnnotations" -}}
{{- if .Values.istio.enabled }}
# The proxy runs as a native sidecar: it starts before init containers and
# does not keep a Job's pod alive.
sidecar.istio.io/nativeSidecar: "true"
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ssak3.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "ssak3.containerSecurityContext" -}}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
runAsNonRoot: true
capabilities: {drop: [ALL]}
{{- end -}}
