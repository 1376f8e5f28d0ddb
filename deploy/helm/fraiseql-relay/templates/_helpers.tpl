{{/* Chart name. */}}
{{- define "fraiseql-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, plus the chart name unless it contains it. */}}
{{- define "fraiseql-relay.fullname" -}}
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

{{- define "fraiseql-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "fraiseql-relay.labels" -}}
helm.sh/chart: {{ include "fraiseql-relay.chart" . }}
app.kubernetes.io/name: {{ include "fraiseql-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fraiseql-relay
{{- end }}

{{/* Selector labels of the relay pods. */}}
{{- define "fraiseql-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fraiseql-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: relay
{{- end }}

{{- define "fraiseql-relay.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "fraiseql-relay.secretName" -}}
{{- .Values.existingSecret | default (include "fraiseql-relay.fullname" .) }}
{{- end }}

{{/* Where the config is mounted, and the file the relay reads (passed with -c). */}}
{{- define "fraiseql-relay.configDir" -}}/etc/fraiseql{{- end }}
{{- define "fraiseql-relay.configFile" -}}{{ include "fraiseql-relay.configDir" . }}/fraiseql.toml{{- end }}

{{/*
Environment of the relay and migrate containers: each of secretKeys from the Secret (the
config's ${NAME} placeholders), then LOG_LEVEL, NODE_OPTIONS (relay only) and extraEnv.
The migrate Job reads DATABASE_URL from migrationJob.databaseUrlKey.
Argument: (list $ secretName isRelay).
*/}}
{{- define "fraiseql-relay.env" -}}
{{- $secret := index . 1 }}
{{- $relay := index . 2 }}
{{- with index . 0 }}
{{- $migrateKey := .Values.migrationJob.databaseUrlKey | default "DATABASE_URL" }}
{{- range .Values.secretKeys }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ if and (not $relay) (eq . "DATABASE_URL") }}{{ $migrateKey }}{{ else }}{{ . }}{{ end }}
{{- end }}
- name: LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- if and $relay .Values.nodeOptions }}
- name: NODE_OPTIONS
  value: {{ .Values.nodeOptions | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Fails the render when the chart creates the Secret but a key it should hold is missing. */}}
{{- define "fraiseql-relay.checkSecretValues" -}}
{{- if not .Values.existingSecret }}
{{- range .Values.secretKeys }}
{{- if not (hasKey $.Values.secretValues .) }}
{{- fail (printf "secretValues.%s is not set: give it a value, or use existingSecret" .) }}
{{- end }}
{{- end }}
{{- with .Values.migrationJob.databaseUrlKey }}
{{- if and $.Values.migrationJob.enabled (not (hasKey $.Values.secretValues .)) }}
{{- fail (printf "secretValues.%s (migrationJob.databaseUrlKey) is not set: give it a value, or use existingSecret" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The volume mounted at configDir: the ConfigMap with fraiseql.toml and, beside it, the files of
configFiles.secrets (CA bundles, client certificate and key, NATS credentials).
Argument: (list $ configMapName).
*/}}
{{- define "fraiseql-relay.configVolume" -}}
{{- $configMap := index . 1 }}
{{- with index . 0 }}
projected:
  defaultMode: {{ .Values.configFiles.defaultMode }}
  sources:
    - configMap:
        name: {{ $configMap }}
    {{- range .Values.configFiles.secrets }}
    - secret:
        name: {{ required "configFiles.secrets: every entry needs a name" .name }}
        {{- with .items }}
        items:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- if hasKey . "optional" }}
        optional: {{ .optional }}
        {{- end }}
    {{- end }}
{{- end }}
{{- end }}

{{/* The volume mounts of the relay and migrate containers: the config directory, /tmp, extraVolumeMounts. */}}
{{- define "fraiseql-relay.volumeMounts" -}}
- name: config
  mountPath: {{ include "fraiseql-relay.configDir" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}
