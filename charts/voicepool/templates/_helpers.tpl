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

{{- /* Namespaces that get the worker ServiceAccount: the release's, worker.namespaces and
every namespace the operator serves (pods there run as it unless the pool names another). */ -}}
{{- define "voicepool.workerNamespaces" -}}
{{- $all := list .Release.Namespace -}}
{{- range .Values.worker.namespaces }}{{- $all = append $all . -}}{{- end -}}
{{- range .Values.operator.watchNamespaces }}{{- $all = append $all . -}}{{- end -}}
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

{{- /* What the operator may do inside a namespace it serves: the worker pods it owns, reading
the Secrets its pools name (a name in the pool's own namespace, never a path), the pools'
busy-pod PodDisruptionBudgets and the Events it records. */ -}}
{{- define "voicepool.operatorNamespacedRules" }}
  # spec.livekit.credentialsSecretRef and spec.telephony.*.authSecretRef: read just before a
  # LiveKit call, never copied anywhere (docs/security.md).
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get"]
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["get", "list", "watch", "create", "patch", "delete"]
  # The busy-pod PodDisruptionBudget of each pool (created once, owned by the pool).
  - apiGroups: ["policy"]
    resources: ["poddisruptionbudgets"]
    verbs: ["get", "create"]
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
  - apiGroups: [""]
    resources: ["events"]
    verbs: ["create", "patch"]
{{- end }}
