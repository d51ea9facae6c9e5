{{/*
The chart's name, or nameOverride.
*/}}
{{- define "oomguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object's name: fullnameOverride, else the release name, followed by
the chart's name unless the release name already contains it ("oomguard", not
"oomguard-oomguard"). 63 characters at most: names are also used as label values.
*/}}
{{- define "oomguard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "oomguard.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Labels that select the agent's pods; they never change across upgrades (a DaemonSet's
selector is immutable).
*/}}
{{- define "oomguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "oomguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "oomguard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "oomguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/part-of: oomguard
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The ServiceAccount the agent runs as.
*/}}
{{- define "oomguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "oomguard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: by digest when one is given, else by tag (default: appVersion).
*/}}
{{- define "oomguard.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The address the metrics server binds: host:port, with an IPv6 host in brackets.
*/}}
{{- define "oomguard.metricsAddress" -}}
{{- if contains ":" .Values.metrics.bindAddress }}
{{- printf "[%s]:%d" .Values.metrics.bindAddress (int .Values.metrics.port) }}
{{- else }}
{{- printf "%s:%d" .Values.metrics.bindAddress (int .Values.metrics.port) }}
{{- end }}
{{- end }}

{{/*
Where the policy ConfigMap is mounted in the container, and the file the agent reads.
*/}}
{{- define "oomguard.policyDir" -}}/etc/oomguard{{- end }}
{{- define "oomguard.policyFile" -}}{{ include "oomguard.policyDir" . }}/policy.yaml{{- end }}

{{/*
Where the state directory (a hostPath) is mounted in the container: the agent's default.
*/}}
{{- define "oomguard.stateDir" -}}/var/lib/oomguard{{- end }}
