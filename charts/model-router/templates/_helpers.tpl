{{- define "model-router.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "model-router.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "model-router.labels" -}}
{{ include "model-router.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "model-router.redisSelectorLabels" -}}
app.kubernetes.io/name: redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "model-router.redisName" -}}
{{ include "model-router.fullname" . }}-redis
{{- end -}}

{{- define "model-router.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ default (include "model-router.fullname" .) .Values.serviceAccount.name }}
{{- else -}}
{{ default "default" .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{- define "model-router.adminKeySecret" -}}
{{ default (include "model-router.fullname" .) .Values.adminKey.existingSecret }}
{{- end -}}

{{/* The chart's own Secret <fullname> holds what no existing Secret provides:
the admin key, the bundled Redis' password, redis.url (it may carry one). */}}
{{- define "model-router.ownsSecret" -}}
{{- if or (not .Values.adminKey.existingSecret) .Values.redis.enabled .Values.redis.url -}}true{{- end -}}
{{- end -}}

{{- define "model-router.checkStore" -}}
{{- $stores := 0 -}}
{{- range (list .Values.redis.enabled .Values.redis.url .Values.redis.existingSecret) -}}
{{- if . }}{{ $stores = add1 $stores }}{{ end -}}
{{- end -}}
{{- if gt $stores 1 -}}
{{- fail "set only one of redis.enabled, redis.url and redis.existingSecret" -}}
{{- end -}}
{{- /* SQLite on a pod's emptyDir would be lost with the pod, and not shared. */ -}}
{{- if eq $stores 0 -}}
{{- fail "the routers need a shared, persistent store: set redis.enabled=true, redis.url or redis.existingSecret" -}}
{{- end -}}
{{- end -}}
