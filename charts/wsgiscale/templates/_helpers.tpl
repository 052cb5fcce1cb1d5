{{/* The chart name, or nameOverride. */}}
{{- define "wsgiscale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else the release name, with the
chart name appended unless the release name already contains it. At most 63 characters.
*/}}
{{- define "wsgiscale.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, as in the helm.sh/chart label. */}}
{{- define "wsgiscale.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "wsgiscale.labels" -}}
helm.sh/chart: {{ include "wsgiscale.chart" . }}
{{ include "wsgiscale.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wsgiscale
{{- end }}

{{/* Labels that select the operator pods; never the version, so upgrades keep selecting. */}}
{{- define "wsgiscale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wsgiscale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "wsgiscale.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wsgiscale.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image reference. */}}
{{- define "wsgiscale.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The name of the leader election Lease. */}}
{{- define "wsgiscale.leaseName" -}}
{{- include "wsgiscale.fullname" . }}
{{- end }}

{{/* The RBAC rules on WsgiApps and their children, for a ClusterRole or a Role. */}}
{{- define "wsgiscale.appRules" -}}
# Watch WsgiApps, write their status; `update` on finalizers lets the operator set
# blockOwnerDeletion on the owner references of the objects it creates.
- apiGroups: ["wsgiscale.dev"]
  resources: ["wsgiapps"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["wsgiscale.dev"]
  resources: ["wsgiapps/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["wsgiscale.dev"]
  resources: ["wsgiapps/finalizers"]
  verbs: ["update"]
# The children, written with server-side apply; deleted by garbage collection, except a
# PodDisruptionBudget that is no longer wanted.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The app's pods: one shared watch, for their addresses (the servers' load reports) and
# their states, to say in the status why they are not ready.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# The HorizontalPodAutoscalers of an app's namespace, read only while another writer sets
# the scale of an app whose autoscaling is on: they name that writer in the status.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list"]
# Events on WsgiApps.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
