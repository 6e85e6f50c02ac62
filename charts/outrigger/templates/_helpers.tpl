{{/* An image of the mesh: <repository>/<name>:<tag>. */}}
{{- define "outrigger.image" -}}
{{ .root.Values.image.repository }}/{{ .name }}:{{ .root.Values.image.tag | default .root.Chart.AppVersion }}
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
proxyImage: {{ include "outrigger.image" (dict "root" . "name" "proxy") }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
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
