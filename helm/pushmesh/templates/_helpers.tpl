{{/*
Names, labels and the pod pieces every component shares. Each component's
own template (hub-*.yaml, ws-gateway-*.yaml, http-ingress-*.yaml) stays a
readable manifest; only what would otherwise be copied three times lives here.
*/}}

{{- define "pushmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every resource name. Kept to 40 characters: StatefulSet pod
names add "-hub-N" and the controller-revision-hash label must stay under 63.
*/}}
{{- define "pushmesh.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "pushmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<fullname>-<component>", e.g. pushmesh-ws-gateway. Call with (dict "root" $ "component" "hub"). */}}
{{- define "pushmesh.componentName" -}}
{{- printf "%s-%s" (include "pushmesh.fullname" .root) .component -}}
{{- end -}}

{{- define "pushmesh.hub.headless" -}}
{{- printf "%s-hub-headless" (include "pushmesh.fullname" .) -}}
{{- end -}}

{{/* Labels on every resource of a component. Call with (dict "root" $ "component" "hub"). */}}
{{- define "pushmesh.labels" -}}
helm.sh/chart: {{ include "pushmesh.chart" .root }}
{{ include "pushmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: pushmesh
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The labels a component's selectors match on (never change after install). */}}
{{- define "pushmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pushmesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{- define "pushmesh.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "pushmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pushmesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding API keys and the JWT secret: the user's, or the chart's own when it has anything to hold; empty when there is none. */}}
{{- define "pushmesh.secretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else if or .Values.auth.apiKeys .Values.auth.jwtSecret -}}
{{- printf "%s-auth" (include "pushmesh.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
Where gateways and ingresses find the hubs: the headless Service's DNS name,
which answers every hub pod's address (ready or still warming up: see
hub-service.yaml). They re-resolve it every hub.dnsIntervalSecs, so scaling
the hubs or replacing a hub pod needs no rollout of gateways or ingresses.
*/}}
{{- define "pushmesh.hubDns" -}}
{{- printf "%s.%s.svc.%s:%d" (include "pushmesh.hub.headless" .) .Release.Namespace .Values.clusterDomain (int .Values.hub.ports.grpc) -}}
{{- end -}}

{{/*
Checks the schema cannot express (it sees one field at a time). Each message
says what is wrong and what to do.
*/}}
{{- define "pushmesh.validate" -}}
{{- if and .Values.auth.existingSecret (or .Values.auth.apiKeys .Values.auth.jwtSecret) -}}
{{- fail "auth: set either auth.existingSecret or auth.apiKeys/auth.jwtSecret, not both (the chart would not know which one the pods should use)" -}}
{{- end -}}
{{- range $key := list "hub" "wsGateway" "httpIngress" -}}
{{- $c := index $.Values $key -}}
{{- if ge (int $c.preStopSleepSeconds) (int $c.terminationGracePeriodSeconds) -}}
{{- fail (printf "%s: preStopSleepSeconds (%d) must be less than terminationGracePeriodSeconds (%d), or the pod is killed before it can drain" $key (int $c.preStopSleepSeconds) (int $c.terminationGracePeriodSeconds)) -}}
{{- end -}}
{{- if and $c.autoscaling $c.autoscaling.enabled -}}
{{- if gt (int $c.autoscaling.minReplicas) (int $c.autoscaling.maxReplicas) -}}
{{- fail (printf "%s.autoscaling: minReplicas (%d) must not exceed maxReplicas (%d)" $key (int $c.autoscaling.minReplicas) (int $c.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- if not (or $c.autoscaling.targetCPUUtilizationPercentage $c.autoscaling.targetMemoryUtilizationPercentage) -}}
{{- fail (printf "%s.autoscaling: set targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage, or the HPA has nothing to scale on" $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.engine.type "redis") (not (or .Values.engine.redis.url .Values.engine.redis.existingSecret .Values.redis.enabled)) -}}
{{- fail "engine.type=redis needs a Redis: set engine.redis.url, engine.redis.existingSecret (a Secret with the URL), or redis.enabled=true (the bundled single-node Redis, for evaluation)" -}}
{{- end -}}
{{- if and .Values.redis.enabled (ne .Values.engine.type "redis") -}}
{{- fail "redis.enabled deploys a Redis for the hubs' channel state: set engine.type=redis too (or leave redis.enabled false)" -}}
{{- end -}}
{{- $top := .Values.namespaces | default dict -}}
{{- $old := .Values.wsGateway.namespaces | default dict -}}
{{- if and (or $top.proxy $top.list) (or $old.proxy $old.list) -}}
{{- fail "namespaces: set the top-level namespaces or the deprecated wsGateway.namespaces, not both (move wsGateway.namespaces' proxy and list under namespaces)" -}}
{{- end -}}
{{- $tlsSecrets := .Values.hub.tls.existingSecrets -}}
{{- $given := compact (list $tlsSecrets.hub $tlsSecrets.wsGateway $tlsSecrets.httpIngress) -}}
{{- if and (gt (len $given) 0) (lt (len $given) 3) -}}
{{- fail "hub.tls.existingSecrets: give all three Secrets (hub, wsGateway, httpIngress) or none (the chart then generates them all from one CA)" -}}
{{- end -}}
{{- if gt (add (int64 .Values.httpIngress.config.maxBodyBytes) 65536) (int64 .Values.hub.config.maxMessageBytes) -}}
{{- fail (printf "httpIngress.config.maxBodyBytes (%d) must stay 64 KiB under hub.config.maxMessageBytes (%d): the hubs would refuse such a body" (int64 .Values.httpIngress.config.maxBodyBytes) (int64 .Values.hub.config.maxMessageBytes)) -}}
{{- end -}}
{{- if and .Values.auth.jwksUrl (or .Values.auth.jwtSecret (eq .Values.auth.jwtAlgorithm "HS256")) -}}
{{- fail "auth.jwksUrl replaces the JWT secret: leave auth.jwtSecret empty, set auth.jwtAlgorithm to RS256 or ES256, and keep no jwt-secret key in auth.existingSecret" -}}
{{- end -}}
{{- if .Values.hub.colocated -}}
{{- if .Values.hub.tls.enabled -}}
{{- fail "hub.colocated with hub.tls.enabled is not supported yet: run the hubs as their own StatefulSet (hub.colocated=false) to use mutual TLS" -}}
{{- end -}}
{{- if and (eq .Values.engine.type "redis") .Values.engine.redis.tls.caSecret -}}
{{- fail "hub.colocated with engine.redis.tls.caSecret is not supported yet: run the hubs as their own StatefulSet (hub.colocated=false)" -}}
{{- end -}}
{{- $ports := list (int .Values.httpIngress.port) (int .Values.httpIngress.grpcPort) -}}
{{- if or (has (int .Values.hub.ports.grpc) $ports) (has (int .Values.hub.ports.admin) $ports) -}}
{{- fail (printf "hub.colocated: the hub ports (%d, %d) must differ from the ingress's port and grpcPort (%d, %d): they share a pod" (int .Values.hub.ports.grpc) (int .Values.hub.ports.admin) (int .Values.httpIngress.port) (int .Values.httpIngress.grpcPort)) -}}
{{- end -}}
{{- end -}}
{{- if eq (int .Values.hub.ports.grpc) (int .Values.hub.ports.admin) -}}
{{- fail (printf "hub.ports: grpc and admin must differ (both are %d)" (int .Values.hub.ports.grpc)) -}}
{{- end -}}
{{- end -}}

{{/*
The pod-spec lines every component shares: service account, security,
scheduling. Call with (dict "root" $ "component" "hub" "values" .Values.hub).
*/}}
{{- define "pushmesh.podSpecCommon" -}}
serviceAccountName: {{ include "pushmesh.serviceAccountName" .root }}
automountServiceAccountToken: {{ .root.Values.serviceAccount.automountServiceAccountToken }}
# Service links would add a *_SERVICE_HOST variable per Service in the
# namespace: noise for a binary configured only by PUSHMESH_* variables.
enableServiceLinks: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $spread := .root.Values.topologySpread -}}
{{- if or $spread.enabled .values.topologySpreadConstraints }}
topologySpreadConstraints:
{{- if $spread.enabled }}
{{- range $spread.topologyKeys }}
  - maxSkew: {{ $spread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $spread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "pushmesh.selectorLabels" (dict "root" $.root "component" $.component) | nindent 8 }}
{{- end }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Pod annotations: checksums of the component's own config and of the chart's
Secret, so a changed value rolls exactly the pods it affects (scaling hubs
rolls nothing: gateways and ingresses find hubs through DNS).
*/}}
{{- define "pushmesh.podAnnotations" -}}
checksum/config: {{ include (printf "pushmesh.config.%s" .component) .root | sha256sum }}
checksum/secret: {{ include (print .root.Template.BasePath "/secret.yaml") .root | sha256sum }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The preStop hook: a plain wait (the image has no shell), so endpoints drop the pod before SIGTERM. */}}
{{- define "pushmesh.lifecycle" -}}
{{- if gt (int .preStopSleepSeconds) 0 }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ .preStopSleepSeconds }}
{{- end }}
{{- end -}}

{{/* Probe timings from values; the handler comes from the caller. */}}
{{- define "pushmesh.probeTiming" -}}
periodSeconds: {{ .periodSeconds }}
failureThreshold: {{ .failureThreshold }}
timeoutSeconds: {{ .timeoutSeconds }}
{{- end -}}

{{/*
Each component's PUSHMESH_* settings: the data of its ConfigMap (and the
input of its checksum/config annotation). Pods bind every interface: in
Kubernetes each pod has its own IP and the same ports.
*/}}
{{- define "pushmesh.config.hub" -}}
PUSHMESH_GRPC_ADDR: {{ printf "0.0.0.0:%d" (int .Values.hub.ports.grpc) | quote }}
PUSHMESH_ADMIN_ADDR: {{ printf "0.0.0.0:%d" (int .Values.hub.ports.admin) | quote }}
PUSHMESH_QUERY_TIMEOUT_MS: {{ .Values.hub.config.queryTimeoutMs | quote }}
PUSHMESH_LOG: {{ .Values.log.level | quote }}
PUSHMESH_LOG_FORMAT: {{ .Values.log.format | quote }}
{{ include "pushmesh.config.hubSettings" . }}
{{- if .Values.hub.tls.enabled }}
PUSHMESH_TLS_CERT: "/etc/pushmesh/hub-tls/tls.crt"
PUSHMESH_TLS_KEY: "/etc/pushmesh/hub-tls/tls.key"
PUSHMESH_TLS_CLIENT_CA: "/etc/pushmesh/hub-tls/ca.crt"
{{- end }}
{{- end -}}

{{/*
The hub settings a hub reads besides its ports, TLS, log and query deadline
(names the ingress reads too): the hubs' ConfigMap, and the ingresses' when
the hubs run inside them (hub.colocated; the ingress gives its hub a query
deadline 1 s under its own).
*/}}
{{- define "pushmesh.config.hubSettings" -}}
{{- $c := .Values.hub.config -}}
PUSHMESH_GATEWAY_QUEUE: {{ $c.gatewayQueue | quote }}
PUSHMESH_BATCH_MAX: {{ $c.batchMax | quote }}
PUSHMESH_KEEPALIVE_SECS: {{ $c.keepaliveSecs | quote }}
PUSHMESH_MAX_MESSAGE_BYTES: {{ $c.maxMessageBytes | int64 | quote }}
PUSHMESH_ENGINE: {{ .Values.engine.type | quote }}
{{- if include "pushmesh.namespacesEnabled" . }}
PUSHMESH_NAMESPACES: "/etc/pushmesh/namespaces/namespaces.toml"
{{- end }}
{{- if eq .Values.engine.type "redis" }}
{{- $r := .Values.engine.redis }}
PUSHMESH_ENGINE_TIMEOUT_MS: {{ .Values.engine.timeoutMs | quote }}
PUSHMESH_REDIS_URL: {{ include "pushmesh.redisUrl" . | quote }}
PUSHMESH_REDIS_CLUSTER: {{ $r.cluster | quote }}
PUSHMESH_REDIS_PREFIX: {{ $r.prefix | quote }}
{{- with $r.sentinelMaster }}
PUSHMESH_REDIS_SENTINEL_MASTER: {{ . | quote }}
{{- end }}
{{- with $r.tls.caSecret }}
PUSHMESH_REDIS_TLS_CA: {{ printf "/etc/pushmesh/redis-ca/%s" $r.tls.caKey | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The hubs' Redis URL: engine.redis.url, else the bundled Redis's Service. */}}
{{- define "pushmesh.redisUrl" -}}
{{- if .Values.engine.redis.url -}}
{{- .Values.engine.redis.url -}}
{{- else if .Values.redis.enabled -}}
{{- printf "redis://%s.%s.svc.%s:%d" (include "pushmesh.componentName" (dict "root" . "component" "redis")) .Release.Namespace .Values.clusterDomain (int .Values.redis.port) -}}
{{- end -}}
{{- end -}}

{{- define "pushmesh.config.ws-gateway" -}}
{{- $c := .Values.wsGateway.config -}}
PUSHMESH_LISTEN_ADDR: {{ printf "0.0.0.0:%d" (int .Values.wsGateway.port) | quote }}
PUSHMESH_HUB_DNS: {{ include "pushmesh.hubDns" . | quote }}
PUSHMESH_HUB_DNS_INTERVAL_SECS: {{ .Values.hub.dnsIntervalSecs | quote }}
PUSHMESH_OUTBOUND_QUEUE: {{ $c.outboundQueue | quote }}
PUSHMESH_MAX_MESSAGE_BYTES: {{ $c.maxMessageBytes | int64 | quote }}
PUSHMESH_READ_BUFFER_BYTES: {{ $c.readBufferBytes | quote }}
PUSHMESH_MAX_CHANNELS_PER_CONNECTION: {{ $c.maxChannelsPerConnection | quote }}
PUSHMESH_SUBSCRIBE_TIMEOUT_MS: {{ $c.subscribeTimeoutMs | quote }}
PUSHMESH_RECONNECT_MAX_MS: {{ $c.reconnectMaxMs | quote }}
PUSHMESH_KEEPALIVE_SECS: {{ $c.keepaliveSecs | quote }}
PUSHMESH_HANDSHAKE_TIMEOUT_SECS: {{ $c.handshakeTimeoutSecs | quote }}
PUSHMESH_AUTH_TIMEOUT_SECS: {{ $c.authTimeoutSecs | quote }}
PUSHMESH_MAX_CONNECTIONS_PER_USER: {{ $c.maxConnectionsPerUser | quote }}
{{- if include "pushmesh.namespacesEnabled" . }}
PUSHMESH_NAMESPACES: "/etc/pushmesh/namespaces/namespaces.toml"
{{- end }}
PUSHMESH_JWT_ALGORITHM: {{ .Values.auth.jwtAlgorithm | quote }}
{{- with .Values.auth.jwtIssuer }}
PUSHMESH_JWT_ISSUER: {{ . | quote }}
{{- end }}
{{- with .Values.auth.jwtAudience }}
PUSHMESH_JWT_AUDIENCE: {{ . | quote }}
{{- end }}
{{- with .Values.auth.jwksUrl }}
PUSHMESH_JWT_JWKS_URL: {{ . | quote }}
{{- end }}
{{- include "pushmesh.hubTls.clientConfig" . }}
PUSHMESH_LOG: {{ .Values.log.level | quote }}
PUSHMESH_LOG_FORMAT: {{ .Values.log.format | quote }}
{{- end -}}

{{- define "pushmesh.config.http-ingress" -}}
{{- $c := .Values.httpIngress.config -}}
PUSHMESH_LISTEN_ADDR: {{ printf "0.0.0.0:%d" (int .Values.httpIngress.port) | quote }}
PUSHMESH_GRPC_ADDR: {{ printf "0.0.0.0:%d" (int .Values.httpIngress.grpcPort) | quote }}
PUSHMESH_HUB_DNS: {{ include "pushmesh.hubDns" . | quote }}
PUSHMESH_HUB_DNS_INTERVAL_SECS: {{ .Values.hub.dnsIntervalSecs | quote }}
PUSHMESH_MAX_BODY_BYTES: {{ $c.maxBodyBytes | int64 | quote }}
PUSHMESH_HUB_MAX_MESSAGE_BYTES: {{ .Values.hub.config.maxMessageBytes | int64 | quote }}
PUSHMESH_HUB_PROBE_MS: {{ $c.hubProbeMs | quote }}
PUSHMESH_PUBLISH_TIMEOUT_MS: {{ $c.publishTimeoutMs | quote }}
PUSHMESH_MAX_BATCH: {{ $c.maxBatch | quote }}
{{- if .Values.hub.colocated }}
# The hub in this process (hub.colocated): its ports, then its settings.
PUSHMESH_COLOCATED_HUB_ADDR: {{ printf "0.0.0.0:%d" (int .Values.hub.ports.grpc) | quote }}
PUSHMESH_COLOCATED_HUB_ADMIN_ADDR: {{ printf "0.0.0.0:%d" (int .Values.hub.ports.admin) | quote }}
{{ include "pushmesh.config.hubSettings" . }}
{{- end }}
{{- include "pushmesh.hubTls.clientConfig" . }}
{{- with $c.corsAllowOrigins }}
PUSHMESH_CORS_ALLOW_ORIGINS: {{ join "," . | quote }}
{{- end }}
PUSHMESH_LOG: {{ .Values.log.level | quote }}
PUSHMESH_LOG_FORMAT: {{ .Values.log.format | quote }}
{{- end -}}

{{/*
Hub mutual TLS (hub.tls): where each component's certificate comes from.
A Secret the user manages per component (keys ca.crt, tls.crt, tls.key), or
the chart's generated one (hub-tls-secret.yaml), whose keys are named per
component and mapped to the same three file names here. Every pod mounts its
own certificate at /etc/pushmesh/hub-tls/.
Call with (dict "root" $ "component" "hub" | "ws-gateway" | "http-ingress").
*/}}
{{- define "pushmesh.hubTls.generatedSecret" -}}
{{- printf "%s-hub-tls" (include "pushmesh.fullname" .) -}}
{{- end -}}

{{- define "pushmesh.hubTls.volume" -}}
{{- $tls := .root.Values.hub.tls -}}
{{- $key := get (dict "hub" "hub" "ws-gateway" "wsGateway" "http-ingress" "httpIngress") .component -}}
{{- $existing := index $tls.existingSecrets $key -}}
- name: hub-tls
  secret:
    {{- if $existing }}
    secretName: {{ $existing }}
    items:
      - {key: ca.crt, path: ca.crt}
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
    {{- else }}
    secretName: {{ include "pushmesh.hubTls.generatedSecret" .root }}
    items:
      - {key: ca.crt, path: ca.crt}
      - {key: {{ printf "%s.crt" .component }}, path: tls.crt}
      - {key: {{ printf "%s.key" .component }}, path: tls.key}
    {{- end }}
{{- end -}}

{{- define "pushmesh.hubTls.mount" -}}
- name: hub-tls
  mountPath: /etc/pushmesh/hub-tls
  readOnly: true
{{- end -}}

{{/* The name every hub certificate carries and clients verify (hub URLs from DNS are IP addresses). */}}
{{- define "pushmesh.hubTls.domain" -}}
{{- printf "%s.%s.svc.%s" (include "pushmesh.hub.headless" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* A gateway's or ingress's PUSHMESH_HUB_TLS_* settings (ConfigMap lines). */}}
{{- define "pushmesh.hubTls.clientConfig" -}}
{{- if .Values.hub.tls.enabled }}
PUSHMESH_HUB_TLS_CA: "/etc/pushmesh/hub-tls/ca.crt"
PUSHMESH_HUB_TLS_CERT: "/etc/pushmesh/hub-tls/tls.crt"
PUSHMESH_HUB_TLS_KEY: "/etc/pushmesh/hub-tls/tls.key"
PUSHMESH_HUB_TLS_DOMAIN: {{ include "pushmesh.hubTls.domain" . | quote }}
{{- end }}
{{- end -}}

{{/* Non-empty when the gateways and hubs get a namespaces file. */}}
{{- define "pushmesh.namespacesEnabled" -}}
{{- $ns := include "pushmesh.namespacesValues" . | fromJson -}}
{{- if or $ns.proxy $ns.list }}true{{ end -}}
{{- end -}}

{{/* The namespaces values as JSON: the top-level namespaces, else the
deprecated wsGateway.namespaces (pushmesh.validate refuses both). */}}
{{- define "pushmesh.namespacesValues" -}}
{{- $top := .Values.namespaces | default dict -}}
{{- if or $top.proxy $top.list -}}
{{- toJson $top -}}
{{- else -}}
{{- toJson (.Values.wsGateway.namespaces | default dict) -}}
{{- end -}}
{{- end -}}

{{/* The namespaces file (TOML) from the namespaces values, read by the
gateways (client options, [proxy]) and the hubs (history per namespace);
JSON scalars are valid TOML values, and quoted keys valid TOML keys. */}}
{{- define "pushmesh.namespacesToml" -}}
{{- $ns := include "pushmesh.namespacesValues" . | fromJson -}}
{{- with $ns.proxy }}
[proxy]
{{- range $k, $v := . }}
{{ $k }} = {{ toJson $v }}
{{- end }}
{{- end }}
{{- range $ns.list }}

[[namespace]]
{{- range $k, $v := . }}
{{- if kindIs "map" $v }}
{{ $k }} = { {{- range $i, $ck := keys $v | sortAlpha }}{{ if $i }}, {{ end }}{{ toJson $ck }} = {{ toJson (get $v $ck) }}{{ end }} }
{{- else }}
{{ $k }} = {{ toJson $v }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
