{{/* The release's base name for the operator's objects. */}}
{{- define "quartet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object of the release carries. */}}
{{- define "quartet.labels" -}}
app.kubernetes.io/name: quartet-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* What selects the operator's pods. */}}
{{- define "quartet.selector" -}}
app.kubernetes.io/name: quartet-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "quartet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "quartet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}
