{{- define "model-router.labels" -}}
app.kubernetes.io/name: model-router
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "model-router.redisUrl" -}}
{{- if .Values.redis.enabled -}}redis://{{ .Release.Name }}-redis:6379/0{{- else -}}{{ .Values.redis.url }}{{- end -}}
{{- end -}}
