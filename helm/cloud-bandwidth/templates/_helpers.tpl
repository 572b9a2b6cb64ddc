{{/* Names */}}
{{- define "cbw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cbw.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Object names of the components (40 characters leave room for suffixes and pod hashes). */}}
{{- define "cbw.component" -}}
{{- printf "%s-%s" (include "cbw.fullname" .root | trunc 40 | trimSuffix "-") .name -}}
{{- end -}}

{{- define "cbw.redisName" -}}{{ include "cbw.component" (dict "root" . "name" "redis") }}{{- end -}}
{{- define "cbw.graphiteName" -}}{{ include "cbw.component" (dict "root" . "name" "graphite") }}{{- end -}}
{{- define "cbw.configName" -}}{{ include "cbw.component" (dict "root" . "name" "config") }}{{- end -}}

{{- define "cbw.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cbw.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels */}}
{{- define "cbw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cbw.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cbw.labels" -}}
{{ include "cbw.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: cloud-bandwidth
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The project's image */}}
{{- define "cbw.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Redis: the URL every pod uses (the password travels separately, from a Secret). */}}
{{- define "cbw.redisUrl" -}}
{{- if .Values.redis.bundled.enabled -}}
{{- printf "redis://%s:6379/0" (include "cbw.redisName" .) -}}
{{- else -}}
{{- $ext := .Values.redis.external -}}
{{- $url := $ext.url -}}
{{- if not $url -}}
{{- if not $ext.host -}}
{{- fail "redis: set redis.bundled.enabled=true, or redis.external.url / redis.external.host" -}}
{{- end -}}
{{- $url = printf "%s://%s:%d/%d" (ternary "rediss" "redis" $ext.tls.enabled) $ext.host (int $ext.port) (int $ext.db) -}}
{{- end -}}
{{- if and $ext.tls.enabled (not (hasPrefix "rediss://" $url)) -}}
{{- fail "redis.external.tls.enabled is true but redis.external.url does not start with rediss://" -}}
{{- end -}}
{{- if hasPrefix "rediss://" $url -}}
{{- $query := list "ssl_cert_reqs=required" -}}
{{- if $ext.tls.caSecret -}}
{{- $query = append $query (printf "ssl_ca_certs=/etc/cloud-bandwidth/redis-ca/%s" $ext.tls.caSecretKey) -}}
{{- end -}}
{{- $url = printf "%s%s%s" $url (ternary "&" "?" (contains "?" $url)) (join "&" $query) -}}
{{- end -}}
{{- $url -}}
{{- end -}}
{{- end -}}

{{/* The Secret and key holding the Redis password, empty when there is none. */}}
{{- define "cbw.redisSecretName" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecret -}}
{{- else if .Values.redis.bundled.enabled -}}
{{- include "cbw.redisName" . -}}
{{- end -}}
{{- end -}}

{{/* Carbon address: explicit, else the bundled Graphite, else none (config may still carry
     the original's CBANDWIDTH_GRAFANA_ADDRESS). */}}
{{- define "cbw.graphiteAddress" -}}
{{- if .Values.graphite.address -}}
{{- .Values.graphite.address -}}
{{- else if .Values.graphite.bundled.enabled -}}
{{- include "cbw.graphiteName" . -}}
{{- end -}}
{{- end -}}

{{/* The node labels of an agent: the zone (from a pod label, if any) plus static ones. */}}
{{- define "cbw.nodeLabels" -}}
{{- $labels := list -}}
{{- if .Values.agent.zoneFromPodLabel -}}
{{- $labels = append $labels "zone=$(CBW_ZONE)" -}}
{{- end -}}
{{- range $k, $v := .Values.agent.labels -}}
{{- $labels = append $labels (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $labels -}}
{{- end -}}

{{/* Pod annotations that roll the pods when the configuration changes. */}}
{{- define "cbw.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end -}}

{{/* Pod-level security context shared by every cloud-bandwidth pod. */}}
{{- define "cbw.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.uid }}
runAsGroup: {{ .Values.uid }}
fsGroup: {{ .Values.uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security context; .caps are the capabilities added back. */}}
{{- define "cbw.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
  {{- with .caps }}
  add: {{ toJson . }}
  {{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment every cloud-bandwidth container gets beside the ConfigMap. */}}
{{- define "cbw.commonEnv" -}}
{{- $secret := include "cbw.redisSecretName" . -}}
{{- if $secret }}
- name: CBANDWIDTH_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.redis.auth.existingSecretKey }}
{{- end }}
# Touched by the process's event loop; `python -m workers.healthcheck` reads its age.
- name: CBANDWIDTH_HEALTH_FILE
  value: /tmp/cloud-bandwidth.alive
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: TMPDIR
  value: /tmp
{{- end -}}

{{/* Volumes: a writable /tmp (the root filesystem is read-only) and the Redis CA, if any. */}}
{{- define "cbw.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if and (not .Values.redis.bundled.enabled) .Values.redis.external.tls.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ .Values.redis.external.tls.caSecret }}
    items:
      - key: {{ .Values.redis.external.tls.caSecretKey }}
        path: {{ .Values.redis.external.tls.caSecretKey }}
{{- end }}
{{- end -}}

{{- define "cbw.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if and (not .Values.redis.bundled.enabled) .Values.redis.external.tls.caSecret }}
- name: redis-ca
  mountPath: /etc/cloud-bandwidth/redis-ca
  readOnly: true
{{- end }}
{{- end -}}

{{/* Exec probe running the image's health check for one role (agent, results, beat). */}}
{{- define "cbw.probes" -}}
startupProbe:
  exec:
    command: [python, -m, workers.healthcheck, {{ .role }}]
  periodSeconds: 5
  timeoutSeconds: 10
  failureThreshold: 24
livenessProbe:
  exec:
    command: [python, -m, workers.healthcheck, {{ .role }}]
  periodSeconds: 30
  timeoutSeconds: 10
  failureThreshold: 3
readinessProbe:
  exec:
    command: [python, -m, workers.healthcheck, {{ .role }}]
  periodSeconds: 30
  timeoutSeconds: 10
  failureThreshold: 2
{{- end -}}

{{/* The pieces every cloud-bandwidth pod spec shares. */}}
{{- define "cbw.podCommon" -}}
serviceAccountName: {{ include "cbw.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "cbw.podSecurityContext" . | nindent 2 }}
{{- end -}}
