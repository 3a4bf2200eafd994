{{/*
Names. Objects are called <fullname>-mic and <fullname>-nmi; fullname is the release name unless
it already contains the chart name, so `helm install podidentity` gives podidentity-mic.
*/}}
{{- define "podidentity.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "podidentity.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 59 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 59 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 59 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "podidentity.mic.fullname" -}}{{ include "podidentity.fullname" . }}-mic{{- end -}}
{{- define "podidentity.nmi.fullname" -}}{{ include "podidentity.fullname" . }}-nmi{{- end -}}

{{/* Labels on every object. */}}
{{- define "podidentity.labels" -}}
app.kubernetes.io/name: {{ include "podidentity.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "podidentity.versionLabels" . }}
{{- end -}}

{{/* The labels of podidentity.labels that are not selector labels (they change on upgrade). */}}
{{- define "podidentity.versionLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/*
Selector labels per component. The component label is also what the MIC
AzurePodIdentityException matches, so it must stay on MIC's pods.
*/}}
{{- define "podidentity.mic.selectorLabels" -}}
app.kubernetes.io/name: {{ include "podidentity.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: mic
{{- end -}}

{{- define "podidentity.nmi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "podidentity.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: nmi
{{- end -}}

{{/*
Booleans that aad-pod-identity's chart kept as strings ("true"/"false"); both forms mean the same.
*/}}
{{- define "podidentity.bool" -}}
{{- if eq (toString .) "true" -}}true{{- end -}}
{{- end -}}

{{- define "podidentity.forceNamespaced" -}}
{{- if or (include "podidentity.bool" .Values.forceNamespaced) (include "podidentity.managed" .) -}}true{{- end -}}
{{- end -}}

{{- define "podidentity.managed" -}}
{{- if eq (lower (toString .Values.operationMode)) "managed" -}}true{{- end -}}
{{- end -}}

{{- define "podidentity.useAdminSecret" -}}
{{- if .Values.adminsecret -}}true{{- end -}}
{{- end -}}

{{- define "podidentity.adminSecretName" -}}{{ include "podidentity.fullname" . }}-admin-secret{{- end -}}

{{- define "podidentity.image" -}}
{{- $c := index . 1 -}}
{{- printf "%s/%s:%s" (trimSuffix "/" (index . 0).Values.image.repository) $c.image (default (index . 0).Chart.AppVersion (toString $c.tag)) -}}
{{- end -}}

{{- define "podidentity.leaseNamespace" -}}
{{- default .Release.Namespace .Values.mic.leaderElection.namespace -}}
{{- end -}}

{{- define "podidentity.micNamespace" -}}
{{- default .Release.Namespace .Values.nmi.micNamespace -}}
{{- end -}}

{{/*
Refuse values that can no longer work, with the fix in the message.
*/}}
{{- define "podidentity.validate" -}}
{{- if include "podidentity.bool" .Values.rbac.pspEnabled -}}
{{- fail "rbac.pspEnabled=true: PodSecurityPolicy was removed in Kubernetes 1.25. Remove the value and label the release namespace for Pod Security Admission instead (pod-security.kubernetes.io/enforce=privileged, because NMI uses the host network)." -}}
{{- end -}}
{{- if not (has (lower (toString .Values.operationMode)) (list "standard" "managed")) -}}
{{- fail (printf "operationMode=%q: use \"standard\" or \"managed\"" (toString .Values.operationMode)) -}}
{{- end -}}
{{- if and .Values.rbac.secretNamespaces (not (include "podidentity.bool" .Values.rbac.allowAccessToSecrets)) -}}
{{- fail "rbac.secretNamespaces is set but rbac.allowAccessToSecrets is false: enable allowAccessToSecrets, or empty secretNamespaces" -}}
{{- end -}}
{{- if and (has "*" .Values.rbac.secretNamespaces) (gt (len .Values.rbac.secretNamespaces) 1) -}}
{{- fail (printf "rbac.secretNamespaces=%v: \"*\" (every namespace) cannot be combined with namespace names; use either [\"*\"] or the list of namespaces" .Values.rbac.secretNamespaces) -}}
{{- end -}}
{{- if and .Values.admissionPolicy.enabled (semverCompare "<1.30.0-0" .Capabilities.KubeVersion.Version) -}}
{{- fail (printf "admissionPolicy.enabled=true needs Kubernetes 1.30 or later (ValidatingAdmissionPolicy v1), this cluster is %s: upgrade, or set admissionPolicy.enabled=false and nmi.federation.enabled=false (NMI still refuses such identities when a pod asks for a token; federated identities then fail)" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- if and (include "podidentity.bool" .Values.nmi.federation.honorWorkloadIdentityAnnotations) (not .Values.nmi.federation.enabled) -}}
{{- fail "nmi.federation.honorWorkloadIdentityAnnotations=true needs nmi.federation.enabled=true: the annotated ServiceAccounts' identities are federated, and NMI may mint their tokens only with it" -}}
{{- end -}}
{{- if and .Values.nmi.federation.enabled (not .Values.admissionPolicy.enabled) -}}
{{- fail "nmi.federation.enabled=true grants NMI create on serviceaccounts/token, which only the chart's admission policy narrows to federation audiences and pod-bound tokens: keep admissionPolicy.enabled=true (Kubernetes 1.30+), or set nmi.federation.enabled=false (federated identities then fail with 403)" -}}
{{- end -}}
{{- end -}}

{{/*
The Azure AD authority of the chart's cloud (adminsecret.cloud, public cloud by default), as NMI
and the admission policy use it when an identity has no adEndpoint. Empty for a custom cloud
(mic.customCloud or AzureStackCloud): its authority is in a file on the nodes, which the chart
cannot read.
*/}}
{{- define "podidentity.adAuthority" -}}
{{- $cloud := lower (toString (default "AzurePublicCloud" (.Values.adminsecret | default dict).cloud)) -}}
{{- if not .Values.mic.customCloud.enabled -}}
{{- get (dict "azurepubliccloud" "https://login.microsoftonline.com/" "azurechinacloud" "https://login.chinacloudapi.cn/" "azureusgovernmentcloud" "https://login.microsoftonline.us/") $cloud -}}
{{- end -}}
{{- end -}}

{{/*
nmi.allowedADEndpoints as lower-cased host[:port] entries joined by commas, the form NMI compares
(scheme https, no path). An entry that is not https or has a path fails the render.
*/}}
{{- define "podidentity.allowedADHosts" -}}
{{- $hosts := list -}}
{{- range .Values.nmi.allowedADEndpoints -}}
{{- $e := lower (trim (toString .)) -}}
{{- if hasPrefix "http://" $e -}}
{{- fail (printf "nmi.allowedADEndpoints entry %q: Azure AD endpoints must use https (NMI sends the service principal's secret there); write https://host/ or just the host" .) -}}
{{- end -}}
{{- $h := trimSuffix "/" (trimPrefix "https://" $e) -}}
{{- if not (regexMatch "^[a-z0-9][-a-z0-9.]*(:[0-9]{1,5})?$" $h) -}}
{{- fail (printf "nmi.allowedADEndpoints entry %q is not an Azure AD host: write https://host[:port]/ (no path, query or user) or host[:port]" .) -}}
{{- end -}}
{{- $hosts = append $hosts $h -}}
{{- end -}}
{{- join "," ($hosts | uniq) -}}
{{- end -}}

{{/* rbac.secretNamespaces: ["*"] asks for every namespace. */}}
{{- define "podidentity.secretsClusterWide" -}}
{{- if and (include "podidentity.bool" .Values.rbac.allowAccessToSecrets) (has "*" .Values.rbac.secretNamespaces) -}}true{{- end -}}
{{- end -}}

{{/* A list of strings (hosts, already restricted to [-a-z0-9.:]) as CEL list elements. */}}
{{- define "podidentity.celStrings" -}}
{{- $q := list -}}
{{- range . }}{{ $q = append $q (squote .) }}{{ end -}}
{{- join ", " $q -}}
{{- end -}}
