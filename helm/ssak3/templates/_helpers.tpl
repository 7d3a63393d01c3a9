{{/* Release-scoped name of one service: <release>-<service>. */}}
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

{{- define "ssak3.secretName" -}}
{{- default (printf "%s-ssak3" .Release.Name) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The SPIFFE principal of a service's account, as Istio authorization sees it. */}}
{{- define "ssak3.principal" -}}
{{- printf "cluster.local/ns/%s/sa/%s" .root.Release.Namespace (include "ssak3.name" .) -}}
{{- end -}}

{{/* Seconds the kubelet waits before killing a pod: see values.shutdown. */}}
{{- define "ssak3.terminationGrace" -}}
{{- add .Values.shutdown.preStopSeconds .Values.shutdown.drainDelaySeconds .Values.shutdown.graceSeconds 5 -}}
{{- end -}}
