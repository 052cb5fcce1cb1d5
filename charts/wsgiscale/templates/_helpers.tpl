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

{{/* The operator's metrics Service (also where the activator pushes demand). */}}
{{- define "wsgiscale.metricsServiceName" -}}
{{- include "wsgiscale.fullname" . }}-metrics
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
{{- if .Values.activator.enabled }}
# Each app's public EndpointSlice, written by the operator: the app's pods, or the ready
# activators while the activator is in the app's path.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end }}
{{- end }}

{{/*
The activator: wsgiscale-activator from the operator's image, its own Deployment. Its names
end in -activator; its pods carry their own app.kubernetes.io/name, so that the operator's
selectors (Deployment, metrics Service, PodDisruptionBudget, ServiceMonitor) never match them.
*/}}
{{- define "wsgiscale.activator.fullname" -}}
{{- printf "%s-activator" (include "wsgiscale.fullname" . | trunc 53 | trimSuffix "-") }}
{{- end }}

{{/* The activator's name label. */}}
{{- define "wsgiscale.activator.name" -}}
{{- printf "%s-activator" (include "wsgiscale.name" . | trunc 53 | trimSuffix "-") }}
{{- end }}

{{/* The ConfigMap holding the route table: the operator writes it, the activator reads it. */}}
{{- define "wsgiscale.activator.routesName" -}}
{{- include "wsgiscale.activator.fullname" . }}-routes
{{- end }}

{{/* Labels of the activator's objects. */}}
{{- define "wsgiscale.activator.labels" -}}
helm.sh/chart: {{ include "wsgiscale.chart" . }}
{{ include "wsgiscale.activator.selectorLabels" . }}
app.kubernetes.io/component: activator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wsgiscale
{{- end }}

{{/* Labels that select the activator pods; never the version. */}}
{{- define "wsgiscale.activator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wsgiscale.activator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the activator runs as. */}}
{{- define "wsgiscale.activator.serviceAccountName" -}}
{{- if .Values.activator.serviceAccount.create }}
{{- default (include "wsgiscale.activator.fullname" .) .Values.activator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.activator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The activator's rules on the apps' EndpointSlices, for a ClusterRole or a Role. */}}
{{- define "wsgiscale.activator.endpointRules" -}}
# Where each app's pods are, and which are ready: the EndpointSlices of its pods Service.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* The operator's HTTP base URL, where the activator pushes demand: the metrics Service. */}}
{{- define "wsgiscale.activator.operatorURL" -}}
{{- printf "http://%s.%s.svc:%d" (include "wsgiscale.metricsServiceName" .) .Release.Namespace (int .Values.metrics.port) }}
{{- end }}

{{/*
Checks of the activator's values that span keys (a schema checks each key alone); fails the
install with the reason.
*/}}
{{- define "wsgiscale.activator.validate" -}}
{{- $a := .Values.activator }}
{{- if ge (int $a.drainTimeoutSeconds) (int $a.terminationGracePeriodSeconds) }}
{{- fail (printf "activator.drainTimeoutSeconds (%d) must be below activator.terminationGracePeriodSeconds (%d): the kubelet kills the activator at the end of the grace period, dropping the requests it still holds" (int $a.drainTimeoutSeconds) (int $a.terminationGracePeriodSeconds)) }}
{{- end }}
{{- if not .Values.metrics.service.enabled }}
{{- fail "activator.enabled needs metrics.service.enabled: the activator pushes the requests it holds to the operator through that Service, which is how an app at zero pods starts on its first request; set activator.enabled=false to run without the activator" }}
{{- end }}
{{- end }}
