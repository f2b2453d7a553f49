{{/* The release's base name, at most 63 characters. */}}
{{- define "fulcrum.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the server pods. */}}
{{- define "fulcrum.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{/* Labels on every object. */}}
{{- define "fulcrum.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The model file's size in MiB: given, or the registry's; a model of unknown size needs model.sizeMiB. */}}
{{- define "fulcrum.modelMiB" -}}
{{- if gt (int .Values.model.sizeMiB) 0 -}}
{{- .Values.model.sizeMiB | int -}}
{{- else if hasKey .Values.modelSizesMiB .Values.model.name -}}
{{- index .Values.modelSizesMiB .Values.model.name | int -}}
{{- else -}}
{{- fail (printf "model %q is not in modelSizesMiB: set model.sizeMiB to its file's size" .Values.model.name) -}}
{{- end -}}
{{- end -}}

{{/* Memory the server needs, MiB: the mapped model file, the KV pool and the overhead. */}}
{{- define "fulcrum.memoryMiB" -}}
{{- add (include "fulcrum.modelMiB" . | int) (.Values.server.kvMemoryMiB | int) (.Values.resources.overheadMiB | int) -}}
{{- end -}}

{{/* The endpoint picker's Service name. */}}
{{- define "fulcrum.eppName" -}}
{{- default (printf "%s-epp" (include "fulcrum.fullname" .)) .Values.inferencePool.endpointPicker.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The port of a ZeroMQ endpoint `tcp://host:port`. */}}
{{- define "fulcrum.endpointPort" -}}
{{- regexFind "[0-9]+$" . -}}
{{- end -}}
