{{/* Name of the release's objects: <release>-ska-oso-oet unless the release says it. */}}
{{- define "oet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "oet.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "oet.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "oet.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.registry -}}
{{- printf "%s/%s:%s" .Values.image.registry .Values.image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
Device-server instances as JSON: {"<instance>": [subarray numbers]}. One instance "oet" with
every subarray, or "oet<n>" per subarray when deviceServer.instancePerSubarray is true.
*/}}
{{- define "oet.instances" -}}
{{- $instances := dict -}}
{{- if .Values.deviceServer.instancePerSubarray -}}
{{- range $n := untilStep 1 (int (add .Values.subarrays 1)) 1 -}}
{{- $_ := set $instances (printf "oet%d" $n) (list $n) -}}
{{- end -}}
{{- else -}}
{{- $_ := set $instances "oet" (untilStep 1 (int (add .Values.subarrays 1)) 1) -}}
{{- end -}}
{{- toJson $instances -}}
{{- end -}}

{{/* dsconfig JSON registering every device with its properties (same shape as deviceservers/oet.json). */}}
{{- define "oet.dsconfig" -}}
{{- $root := . -}}
{{- $props := .Values.deviceServer.properties -}}
{{- $instances := dict -}}
{{- range $instance, $subarrays := include "oet.instances" . | fromJson -}}
{{- $devices := dict -}}
{{- range $n := $subarrays -}}
{{- $n = int $n -}}
{{- $p := dict
    "SubarrayId" (list (toString $n))
    "HistorySize" (list (toString $props.HistorySize))
    "StopGraceSeconds" (list (toString $props.StopGraceSeconds))
    "WarmWorkers" (list (toString $props.WarmWorkers))
    "ScriptRoots" (list $root.Values.scripts.mountPath)
    "StateDatabase" (list (printf "/var/lib/oet/state/oso_oet_%d.sqlite" $n))
    "SBStore" (list "/var/lib/oet/state/sbds")
    "EnvironmentsDir" (list "/var/lib/oet/cache/envs")
    "GitCacheDir" (list "/var/lib/oet/cache/git") -}}
{{- if $props.AbortScript -}}
{{- $_ := set $p "AbortScript" (list $props.AbortScript) -}}
{{- end -}}
{{- $_ := set $devices (printf "oso/oet/%d" $n) (dict "properties" $p) -}}
{{- end -}}
{{- $_ := set $instances $instance (dict "OETDevice" $devices) -}}
{{- end -}}
{{- /* Linked observation groups: the OETGroups device, in the first instance. */ -}}
{{- $all := list -}}
{{- range $n := until (int .Values.subarrays) -}}
{{- $all = append $all (printf "oso/oet/%d" (add1 $n)) -}}
{{- end -}}
{{- $gp := dict "StateDatabase" (list "/var/lib/oet/state/oso_oet_groups.sqlite") -}}
{{- $_ := set $gp "OETDevices" $all -}}
{{- $first := index $instances (keys $instances | sortAlpha | first) -}}
{{- $_ := set $first "OETGroups" (dict "oso/oet/groups" (dict "properties" $gp)) -}}
{{- $readOnly := list "GetProcedure" "GetActivity" "GetSbd" "GetVersionInfo" "CheckLongRunningCommandStatus" "ProbeEvents" -}}
{{- $classes := dict "OETDevice" (dict "properties" (dict "AllowedAccessCmd" $readOnly)) -}}
{{- dict "servers" (dict "OETDeviceServer" $instances) "classes" $classes | toPrettyJson -}}
{{- end -}}
