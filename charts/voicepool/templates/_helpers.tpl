{{- define "voicepool.name" -}}voicepool{{- end -}}

{{- define "voicepool.fullname" -}}
{{- if contains "voicepool" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-voicepool" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "voicepool.labels" -}}
app.kubernetes.io/name: {{ include "voicepool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: voicepool
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "voicepool.operatorSelector" -}}
app.kubernetes.io/name: {{ include "voicepool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "voicepool.workerNamespaces" -}}
{{- $all := list .Release.Namespace -}}
{{- range .Values.worker.namespaces }}{{- $all = append $all . -}}{{- end -}}
{{- uniq $all | toJson -}}
{{- end -}}

{{- /* "true" when a monitoring.coreos.com kind should render: value true, or "auto" and served.
Args: (list $ <value> <Kind>). */ -}}
{{- define "voicepool.monitoringEnabled" -}}
{{- $ctx := index . 0 -}}{{- $value := toString (index . 1) -}}{{- $kind := index . 2 -}}
{{- if or (eq $value "true") (and (eq $value "auto") ($ctx.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind))) -}}
true
{{- end -}}
{{- end -}}
