{{/*
An image of the mesh, from the component's image values (dict "root" .
"name" "control-plane" "image" .Values.controlPlane.image): its repository
(default <image.repository>/<name>), then @<digest> when a digest is given,
else :<tag> (default image.tag, then the chart's appVersion).
*/}}
{{- define "outrigger.image" -}}
{{- $image := .image | default dict -}}
{{- $repository := $image.repository | default (printf "%s/%s" .root.Values.image.repository .name) -}}
{{- if $image.digest -}}
{{ $repository }}@{{ $image.digest }}
{{- else -}}
{{ $repository }}:{{ $image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* A component's imagePullPolicy: its own, else image.pullPolicy. */}}
{{- define "outrigger.pullPolicy" -}}
{{- $image := .image | default dict -}}
{{ $image.pullPolicy | default .root.Values.image.pullPolicy }}
{{- end }}

{{/*
The scheduling and pull fields of a component's pod spec (dict "root" .
"name" "outrigger-control-plane" "values" .Values.controlPlane), at the pod
spec's indentation: imagePullSecrets (the global ones, then the
component's; names or {name} objects), nodeSelector, tolerations,
affinity (with podAntiAffinity: soft, a preferred anti-affinity by
hostname unless affinity has its own), topologySpreadConstraints,
priorityClassName.
*/}}
{{- define "outrigger.podScheduling" -}}
{{- $v := .values -}}
{{- $secrets := list -}}
{{- range (concat (.root.Values.imagePullSecrets | default list) ($v.imagePullSecrets | default list)) -}}
{{- $name := . -}}
{{- if kindIs "map" . }}{{ $name = .name }}{{ end -}}
{{- if not (has $name $secrets) }}{{ $secrets = append $secrets $name }}{{ end -}}
{{- end -}}
{{- if $secrets }}
imagePullSecrets:
{{- range $secrets }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $affinity := deepCopy ($v.affinity | default dict) -}}
{{- if and (eq ($v.podAntiAffinity | default "") "soft") (not (hasKey $affinity "podAntiAffinity")) -}}
{{- $selector := dict "matchLabels" (dict "app.kubernetes.io/name" .name "app.kubernetes.io/instance" .root.Release.Name) -}}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" $selector -}}
{{- $_ := set $affinity "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $term))) -}}
{{- end -}}
{{- with $affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/*
A PodDisruptionBudget for a component (dict "root" . "name"
"outrigger-injector" "values" .Values.injector): rendered when it has more
than one replica or its podDisruptionBudget.enabled is true.
*/}}
{{- define "outrigger.pdb" -}}
{{- $pdb := .values.podDisruptionBudget | default dict -}}
{{- if or (gt (int .values.replicas) 1) $pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "outrigger.labels" .root | nindent 4 }}
    app.kubernetes.io/name: {{ .name }}
spec:
  maxUnavailable: {{ $pdb.maxUnavailable | default 1 }}
  selector:
    matchLabels:
      app.kubernetes.io/name: {{ .name }}
      app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}
{{- end }}

{{/* Labels every object of the chart carries. */}}
{{- define "outrigger.labels" -}}
app.kubernetes.io/part-of: outrigger
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The Secret holding the mesh CA (ca.pem, ca.key, roots.pem). */}}
{{- define "outrigger.caSecret" -}}
{{- if .Values.identity.ca.existingSecret -}}
{{ .Values.identity.ca.existingSecret }}
{{- else -}}
{{- if not (and .Values.identity.ca.cert .Values.identity.ca.key) -}}
{{- fail "identity.ca: give the mesh CA, either identity.ca.existingSecret (a Secret with ca.pem, ca.key and roots.pem) or the PEM texts: --set-file identity.ca.cert=ca.pem,identity.ca.key=ca.key (tests/e2e/kind.sh shows how to make one with openssl)" -}}
{{- end -}}
outrigger-ca
{{- end -}}
{{- end }}

{{/* The control plane's address as proxies dial it. */}}
{{- define "outrigger.controlPlaneAddress" -}}
outrigger-control-plane.{{ .Release.Namespace }}.svc:{{ .Values.controlPlane.port }}
{{- end }}

{{/* The security context of the control plane's and the injector's containers. */}}
{{- define "outrigger.restricted" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The Secret with the webhook's serving certificate (tls.crt, tls.key). */}}
{{- define "outrigger.webhookSecret" -}}
{{ .Values.injector.tls.existingSecret | default "outrigger-injector-tls" }}
{{- end }}

{{/* The mesh config (the injector's --config): what every injected pod gets. */}}
{{- define "outrigger.meshConfig" -}}
proxyImage: {{ include "outrigger.image" (dict "root" . "name" "proxy" "image" .Values.proxy.image) }}
imagePullPolicy: {{ include "outrigger.pullPolicy" (dict "root" . "image" .Values.proxy.image) }}
proxyInitImage: {{ include "outrigger.image" (dict "root" . "name" "proxy-init" "image" .Values.proxyInit.image) }}
proxyInitImagePullPolicy: {{ include "outrigger.pullPolicy" (dict "root" . "image" .Values.proxyInit.image) }}
controlPlaneAddress: {{ include "outrigger.controlPlaneAddress" . }}
controlPlaneNamespace: {{ .Release.Namespace }}
controlPlaneServiceAccount: outrigger-control-plane
trustDomain: {{ .Values.trustDomain }}
proxyUid: {{ .Values.proxy.uid }}
nativeSidecar: {{ .Values.proxy.nativeSidecar }}
logLevel: {{ .Values.proxy.logLevel | quote }}
accessLog: {{ .Values.proxy.accessLog | quote }}
resources:
  {{- toYaml .Values.proxy.resources | nindent 2 }}
skipInboundPorts: {{ toJson .Values.proxy.skipInboundPorts }}
skipOutboundPorts: {{ toJson .Values.proxy.skipOutboundPorts }}
pathNormalization: {{ .Values.proxy.pathNormalization }}
upgrades: {{ toJson .Values.proxy.upgrades }}
metricsFormat: {{ .Values.proxy.metricsFormat | quote }}
clusterDomain: {{ .Values.clusterDomain | quote }}
clusterName: {{ .Values.clusterName | quote }}
tracing:
  collector: {{ .Values.proxy.tracing.collector | quote }}
  sampling: {{ .Values.proxy.tracing.sampling }}
{{- end }}
