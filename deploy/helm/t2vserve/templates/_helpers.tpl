{{- define "t2vserve.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "t2vserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "t2vserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "t2vserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* selector labels of one component: server, jobs-api or jobs-worker */}}
{{- define "t2vserve.selector" -}}
app.kubernetes.io/name: {{ include "t2vserve.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "t2vserve.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}
{{- end -}}

{{/* The supervisor drains for up to profile.server.exit_timeout_s, then gives Triton 60 s to
stop; the preStop sleep comes first. The grace period covers all three. */}}
{{- define "t2vserve.gracePeriod" -}}
{{- $need := add .Values.preStopSleepSeconds .Values.profile.server.exit_timeout_s 60 -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- $need -}}
{{- else if lt (int .Values.terminationGracePeriodSeconds) (int $need) -}}
{{- fail (printf "terminationGracePeriodSeconds %v is shorter than preStopSleepSeconds + profile.server.exit_timeout_s + 60 = %v: a rollout would kill generations still running" .Values.terminationGracePeriodSeconds $need) -}}
{{- else -}}
{{- .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{- define "t2vserve.redisUrl" -}}
{{- with .Values.jobs.redis -}}
redis://{{ .host }}:{{ .port }}/{{ .db }}
{{- end -}}
{{- end -}}

{{/* Dramatiq's RedisBroker keeps a queue's pending message ids in the list
"<namespace>:<queue>"; t2vserve.jobs.worker uses namespace t2v-dramatiq. */}}
{{- define "t2vserve.redisTriggers" -}}
{{- $root := .root -}}
{{- range list "videos-high" "videos" }}
- type: redis
  name: jobs-{{ . }}
  metadata:
    address: {{ printf "%s:%v" $root.Values.jobs.redis.host $root.Values.jobs.redis.port | quote }}
    databaseIndex: {{ $root.Values.jobs.redis.db | quote }}
    listName: t2v-dramatiq:{{ . }}
    listLength: {{ $.perReplica | quote }}
{{- end }}
{{- end -}}

{{/* Mean queue time per t2v or t2v_stream (the jobs workers') request in ms, over the fleet in this namespace. Triton adds a
request's queue time when it completes. The clamp keeps an idle fleet at 0 (not NaN) and is
below any rate with one request in the window: video request rates are far below 1/s, so a
clamp at 1 would understate the time. deploy/prometheus/tests/autoscaling.yaml tests this
expression on series shaped like a real scrape. */}}
{{- define "t2vserve.queueTimeQuery" -}}
sum(rate(nv_inference_queue_duration_us{model=~"t2v|t2v_stream",namespace="{{ .Release.Namespace }}"}[{{ .Values.autoscaling.window }}])) / clamp_min(sum(rate(nv_inference_request_success{model=~"t2v|t2v_stream",namespace="{{ .Release.Namespace }}"}[{{ .Values.autoscaling.window }}])), 0.001) / 1000
{{- end -}}

{{- define "t2vserve.pendingQuery" -}}
sum(nv_inference_pending_request_count{model=~"t2v|t2v_stream",namespace="{{ .Release.Namespace }}"})
{{- end -}}

{{- define "t2vserve.checkRange" -}}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) -}}
{{- fail (printf "autoscaling.minReplicas %v is above autoscaling.maxReplicas %v" .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) -}}
{{- end -}}
{{- end -}}

{{- define "t2vserve.behavior" -}}
scaleUp:
  stabilizationWindowSeconds: {{ .Values.autoscaling.scaleUpStabilizationSeconds }}
  policies:
    - {type: Pods, value: 2, periodSeconds: 60}
scaleDown:
  stabilizationWindowSeconds: {{ .Values.autoscaling.scaleDownStabilizationSeconds }}
  policies:
    - {type: Pods, value: 1, periodSeconds: 300}
{{- end -}}
