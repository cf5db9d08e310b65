//! Istio `networking.istio.io` (VirtualService, DestinationRule),
//! `security.istio.io` RequestAuthentication, Gateway API `Gateway`, and
//! Ambit's `RateLimitPolicy`, as users write them. Unknown fields are
//! rejected (serde names the path), so a typo is an error, not a silent
//! no-op. Fields Ambit reads but does not act on yet are kept as raw values
//! so valid Istio YAML still loads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::istio::Object;
use super::istio::{TargetRef, WorkloadSelector};

/// Any field accepted and not interpreted.
pub type Raw = Option<serde_json::Value>;

/// `VirtualService`.
pub type VirtualService = Object<VirtualServiceSpec>;
/// `DestinationRule`.
pub type DestinationRule = Object<DestinationRuleSpec>;
/// `RequestAuthentication`.
pub type RequestAuthentication = Object<RequestAuthenticationSpec>;
/// Gateway API `Gateway` (waypoints are `gatewayClassName: istio-waypoint`).
pub type Gateway = Object<GatewaySpec>;
/// `RateLimitPolicy` (`ambit.dev/v1alpha1`): Ambit's local rate limit.
pub type RateLimitPolicy = Object<RateLimitPolicySpec>;

/// `VirtualService.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// Hosts the rules apply to.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateways (ingress); ignored for mesh traffic.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// HTTP routes, in order.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// TCP routes.
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    /// TLS routes (not interpreted).
    #[serde(default)]
    pub tls: Raw,
    /// Visibility (not interpreted).
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// `{exact|prefix|regex}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    /// Equal.
    #[serde(default)]
    pub exact: Option<String>,
    /// Starts with.
    #[serde(default)]
    pub prefix: Option<String>,
    /// RE2, full match.
    #[serde(default)]
    pub regex: Option<String>,
}

/// `http[].match[]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatch {
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Path.
    #[serde(default)]
    pub uri: Option<StringMatch>,
    /// Scheme.
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    /// Method.
    #[serde(default)]
    pub method: Option<StringMatch>,
    /// Authority.
    #[serde(default)]
    pub authority: Option<StringMatch>,
    /// Headers.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Port.
    #[serde(default)]
    pub port: Option<u32>,
    /// Source pod labels.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Query parameters.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Case-insensitive URI match.
    #[serde(default)]
    pub ignore_uri_case: Option<bool>,
    /// Headers that must be absent.
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Source namespace.
    #[serde(default)]
    pub source_namespace: Option<String>,
    /// Stats prefix (not interpreted).
    #[serde(default)]
    pub stat_prefix: Option<String>,
}

/// `{number}` port selector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    /// Port number.
    pub number: u32,
}

/// `destination:`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Service host (short, FQDN or `svc.ns`).
    pub host: String,
    /// DestinationRule subset.
    #[serde(default)]
    pub subset: Option<String>,
    /// Port.
    #[serde(default)]
    pub port: Option<PortSelector>,
}

/// `set/add/remove`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Delete.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `headers:`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    /// On the request.
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    /// On the response.
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

/// `route[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDestination {
    /// Where.
    pub destination: Destination,
    /// Share of traffic (percent).
    #[serde(default)]
    pub weight: Option<i64>,
    /// Header changes for this destination.
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// `{value}` percentage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    /// 0–100.
    pub value: f64,
}

/// `retries:`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Attempts.
    #[serde(default)]
    pub attempts: Option<i64>,
    /// Per try timeout (`1s`, `250ms`).
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Conditions.
    #[serde(default)]
    pub retry_on: Option<String>,
    /// Not interpreted.
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
}

/// `fault.delay`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    /// Delay.
    #[serde(default)]
    pub fixed_delay: Option<String>,
    /// Share delayed.
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// Deprecated integer percent.
    #[serde(default)]
    pub percent: Option<i64>,
}

/// `fault.abort`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Abort {
    /// Status to answer.
    #[serde(default)]
    pub http_status: Option<i64>,
    /// gRPC status (not interpreted).
    #[serde(default)]
    pub grpc_status: Option<String>,
    /// Share aborted.
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// `fault:`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Delay.
    #[serde(default)]
    pub delay: Option<Delay>,
    /// Abort.
    #[serde(default)]
    pub abort: Option<Abort>,
}

/// `redirect:`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    /// New path.
    #[serde(default)]
    pub uri: Option<String>,
    /// New authority.
    #[serde(default)]
    pub authority: Option<String>,
    /// New port.
    #[serde(default)]
    pub port: Option<u32>,
    /// Not interpreted.
    #[serde(default)]
    pub derive_port: Option<String>,
    /// New scheme.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Status (default 301).
    #[serde(default)]
    pub redirect_code: Option<u32>,
}

/// `rewrite:`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the matched prefix (or the whole path).
    #[serde(default)]
    pub uri: Option<String>,
    /// New authority.
    #[serde(default)]
    pub authority: Option<String>,
    /// Regex path rewrite (Envoy `regex_rewrite`).
    #[serde(default)]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// `rewrite.uriRegexRewrite`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    /// RE2 pattern searched for in the path.
    #[serde(default, rename = "match")]
    pub pattern: String,
    /// Replacement; `\1` names capture groups.
    #[serde(default)]
    pub rewrite: String,
}

/// `directResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// Status to answer.
    pub status: u32,
    /// Body.
    #[serde(default)]
    pub body: Option<DirectBody>,
}

/// `directResponse.body`: one of `string` or base64 `bytes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectBody {
    /// Text body.
    #[serde(default)]
    pub string: Option<String>,
    /// Base64 body.
    #[serde(default)]
    pub bytes: Option<String>,
}

/// `mirrors[]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorPolicy {
    /// Target.
    pub destination: Destination,
    /// Share mirrored (default 100).
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// `corsPolicy:`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Origins.
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// Methods.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Request headers.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Exposed response headers.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Preflight cache (`24h`).
    #[serde(default)]
    pub max_age: Option<String>,
    /// Credentials.
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    /// Not interpreted.
    #[serde(default)]
    pub unmatched_preflights: Option<String>,
}

/// `http[]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Conditions (ORed); none means match all.
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatch>,
    /// Destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
    /// Redirect instead of routing.
    #[serde(default)]
    pub redirect: Option<Redirect>,
    /// Answer without an upstream.
    #[serde(default)]
    pub direct_response: Option<DirectResponse>,
    /// Delegation to another VirtualService (reported, not applied).
    #[serde(default)]
    pub delegate: Raw,
    /// Rewrite.
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// Overall timeout.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Retries.
    #[serde(default)]
    pub retries: Option<Retries>,
    /// Faults.
    #[serde(default)]
    pub fault: Option<Fault>,
    /// Mirror target.
    #[serde(default)]
    pub mirror: Option<Destination>,
    /// More mirror targets, each with its own percentage.
    #[serde(default)]
    pub mirrors: Vec<MirrorPolicy>,
    /// Share mirrored.
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    /// Share mirrored, the deprecated integer form (read when
    /// `mirrorPercentage` is unset, as Istio does).
    #[serde(default)]
    pub mirror_percent: Option<u32>,
    /// CORS.
    #[serde(default)]
    pub cors_policy: Option<CorsPolicy>,
    /// Header changes.
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// `tcp[].match[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpMatch {
    /// Port.
    #[serde(default)]
    pub port: Option<u32>,
    /// Not interpreted.
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    /// Not interpreted.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Not interpreted.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Not interpreted.
    #[serde(default)]
    pub source_namespace: Option<String>,
}

/// `tcp[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRoute {
    /// Conditions.
    #[serde(default, rename = "match")]
    pub matches: Vec<TcpMatch>,
    /// Destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// `DestinationRule.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// Service host.
    pub host: String,
    /// Policy for all subsets.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named subsets.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Not interpreted.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Not interpreted.
    #[serde(default)]
    pub workload_selector: Raw,
}

/// `subsets[]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Name.
    pub name: String,
    /// Pod labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Overrides.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// `trafficPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Load balancing.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    /// Limits.
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    /// Ejection.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Not interpreted (HBONE carries mTLS).
    #[serde(default)]
    pub tls: Raw,
    /// Not interpreted.
    #[serde(default)]
    pub port_level_settings: Raw,
    /// Not interpreted.
    #[serde(default)]
    pub tunnel: Raw,
    /// Not interpreted.
    #[serde(default)]
    pub proxy_protocol: Raw,
}

/// `loadBalancer`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    /// ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM, PASSTHROUGH.
    #[serde(default)]
    pub simple: Option<String>,
    /// Hashing.
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHash>,
    /// Not interpreted.
    #[serde(default)]
    pub locality_lb_setting: Option<serde_json::Value>,
    /// Not interpreted.
    #[serde(default)]
    pub warmup_duration_secs: Option<String>,
}

/// `consistentHash`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHash {
    /// Hash on this header.
    #[serde(default)]
    pub http_header_name: Option<String>,
    /// Not interpreted.
    #[serde(default)]
    pub http_cookie: Option<serde_json::Value>,
    /// Not interpreted.
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    /// Not interpreted.
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    /// Not interpreted.
    #[serde(default)]
    pub ring_hash: Option<serde_json::Value>,
    /// Not interpreted.
    #[serde(default)]
    pub maglev: Option<serde_json::Value>,
    /// Not interpreted.
    #[serde(default)]
    pub minimum_ring_size: Option<i64>,
}

/// `connectionPool`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPool {
    /// TCP limits.
    #[serde(default)]
    pub tcp: Option<TcpPool>,
    /// HTTP limits.
    #[serde(default)]
    pub http: Option<HttpPool>,
}

/// `connectionPool.tcp`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpPool {
    /// Max connections to the service.
    #[serde(default)]
    pub max_connections: Option<i64>,
    /// Not interpreted.
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// Not interpreted.
    #[serde(default)]
    pub tcp_keepalive: Option<serde_json::Value>,
    /// Not interpreted.
    #[serde(default)]
    pub max_connection_duration: Option<String>,
    /// Not interpreted.
    #[serde(default)]
    pub idle_timeout: Option<String>,
}

/// `connectionPool.http`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPool {
    /// Queued HTTP/1 requests.
    #[serde(default)]
    pub http1_max_pending_requests: Option<i64>,
    /// Concurrent HTTP/2 requests.
    #[serde(default)]
    pub http2_max_requests: Option<i64>,
    /// Requests per upstream connection.
    #[serde(default)]
    pub max_requests_per_connection: Option<i64>,
    /// Not interpreted.
    #[serde(default)]
    pub max_retries: Option<i64>,
    /// Not interpreted.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Not interpreted.
    #[serde(default)]
    pub h2_upgrade_policy: Option<String>,
    /// Not interpreted.
    #[serde(default)]
    pub use_client_protocol: Option<bool>,
    /// Not interpreted.
    #[serde(default)]
    pub max_concurrent_streams: Option<i64>,
}

/// `outlierDetection`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// 5xx in a row before ejection.
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<i64>,
    /// 502/503/504 in a row.
    #[serde(default)]
    pub consecutive_gateway_errors: Option<i64>,
    /// Sweep interval.
    #[serde(default)]
    pub interval: Option<String>,
    /// Minimum ejection.
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    /// Cap on ejected share.
    #[serde(default)]
    pub max_ejection_percent: Option<i64>,
    /// Below this healthy share, no ejection.
    #[serde(default)]
    pub min_health_percent: Option<i64>,
    /// Not interpreted.
    #[serde(default)]
    pub split_external_local_origin_errors: Option<bool>,
    /// Not interpreted.
    #[serde(default)]
    pub consecutive_local_origin_failures: Option<i64>,
    /// Deprecated (not interpreted).
    #[serde(default)]
    pub consecutive_errors: Option<i64>,
}

/// `RequestAuthentication.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// Pods (sidecar form).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Waypoint binding.
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    /// Waypoint binding.
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    /// Issuers.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

/// `jwtRules[].fromHeaders[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtHeader {
    /// Header name.
    pub name: String,
    /// Value prefix, e.g. `Bearer `.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// `jwtRules[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// `iss`.
    pub issuer: String,
    /// Accepted `aud`.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where to fetch the JWKS.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Inline JWKS JSON.
    #[serde(default)]
    pub jwks: Option<String>,
    /// Token locations.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Header to put the payload in.
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    /// Keep the token upstream.
    #[serde(default)]
    pub forward_original_token: Option<bool>,
    /// Claims to copy to request headers.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// Cookies a token may come in.
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// JWKS fetch timeout (a duration, e.g. `5s`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Claims split at spaces, besides `scope` and `permission`.
    #[serde(default)]
    pub space_delimited_claims: Vec<String>,
}

/// `jwtRules[].outputClaimToHeaders[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Header to set.
    pub header: String,
    /// Claim to copy.
    pub claim: String,
}

/// Gateway API `Gateway.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// `istio-waypoint` makes it a waypoint.
    pub gateway_class_name: String,
    /// Listeners (a waypoint has one HBONE listener on 15008).
    #[serde(default)]
    pub listeners: Vec<serde_json::Value>,
    /// Not interpreted.
    #[serde(default)]
    pub addresses: Raw,
    /// Not interpreted.
    #[serde(default)]
    pub infrastructure: Raw,
}

/// `RateLimitPolicy.spec`: a token bucket per target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitPolicySpec {
    /// The Service or waypoint Gateway it limits.
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    /// Limit one VirtualService route (by name) only.
    #[serde(default)]
    pub route: Option<String>,
    /// Bucket size.
    pub max_tokens: u32,
    /// Tokens added per interval (default: max_tokens).
    #[serde(default)]
    pub tokens_per_fill: Option<u32>,
    /// Interval (`1s`).
    pub fill_interval: String,
}
