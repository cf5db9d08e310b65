//! RequestAuthentication: JWT validation as Istio applies it. A token is
//! taken from the rule's `fromHeaders` / `fromParams` (default
//! `Authorization: Bearer …` and `?access_token=`); its issuer picks the rule;
//! the signature must verify with the rule's JWKS, `exp`/`nbf` hold, and one
//! audience match when `audiences` is set. An invalid token is a 401; no token
//! at all passes with no request principal (so `requestPrincipals: ["*"]` in an
//! AuthorizationPolicy then denies it).

use std::collections::BTreeMap;

use ambit_api::xds::proto::l7 as pb;
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};

/// Why a request's token is refused (answered 401).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts, or not JSON.
    #[error("Jwt is not in the form of Header.Payload.Signature")]
    Malformed,
    /// No rule for the token's `iss`.
    #[error("Jwt issuer {0:?} is not configured")]
    UnknownIssuer(String),
    /// The JWKS has no key for the token (yet: `jwksUri` not fetched).
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    NoKey,
    /// Signature, expiry or not-before check failed.
    #[error("Jwt verification fails: {0}")]
    Invalid(String),
    /// An authentic token for another audience: Envoy answers 403, not 401.
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
}

/// A validated token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// `iss/sub`, for logs and `outputClaimToHeaders`.
    pub request_principal: String,
    /// `iss` and `sub`, what `requestPrincipals` match (each on its own).
    pub issuer_subject: (String, String),
    /// Claims flattened for `request.auth.claims[...]` (nested as `a.b`).
    pub claims: BTreeMap<String, Vec<String>>,
    /// The payload, base64url (for `outputPayloadToHeader`).
    pub payload_b64: String,
    /// The rule that validated it.
    pub rule: usize,
    /// Header that carried it (removed upstream unless `forwardOriginalToken`).
    pub from_header: Option<String>,
    /// Headers to set upstream from claims (`outputClaimToHeaders`).
    pub claim_headers: Vec<(String, String)>,
}

/// `(header, value)` for each `outputClaimToHeaders` entry whose claim
/// (nested as `a.b`) is a string, number or boolean: Envoy's
/// `claim_to_headers` copies only those.
fn claim_headers(rule: &pb::JwtRule, claims: &serde_json::Value) -> Vec<(String, String)> {
    use serde_json::Value;
    rule.output_claim_to_headers
        .iter()
        .filter_map(|c| {
            let v = c.claim.split('.').try_fold(claims, |v, k| v.get(k))?;
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((c.header.clone(), text))
        })
        .collect()
}

/// The JWT rules of one service, with their keys.
#[derive(Debug, Default)]
pub struct JwtRules {
    rules: Vec<pb::JwtRule>,
    /// Where each rule's token can be, worked out once per config.
    locations: Vec<Locations>,
    keys: Vec<Option<JwkSet>>,
}

/// Where a token can be: headers (with prefix), query parameters, cookies.
/// None written: Istio's defaults (`Authorization: Bearer`, `access_token`).
#[derive(Debug)]
struct Locations {
    headers: Vec<(String, String)>,
    params: Vec<String>,
    cookies: Vec<String>,
}

fn locations(rule: &pb::JwtRule) -> Locations {
    if rule.from_headers.is_empty() && rule.from_params.is_empty() && rule.from_cookies.is_empty() {
        return Locations {
            headers: vec![("authorization".into(), "Bearer ".into())],
            params: vec!["access_token".into()],
            cookies: vec![],
        };
    }
    Locations {
        headers: rule
            .from_headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.prefix.clone()))
            .collect(),
        params: rule.from_params.clone(),
        cookies: rule.from_cookies.clone(),
    }
}

/// The value of cookie `name` in a `Cookie` header (several headers arrive
/// joined with `,`; neither `;` nor `,` can be part of a cookie value).
fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split([';', ','])
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The claims Istio has Envoy split at spaces (`normalize_payload_in_metadata`):
/// `scope: "read write"` matches `request.auth.claims[scope]: [write]`; a
/// rule's `spaceDelimitedClaims` adds to them.
const SPACE_DELIMITED: &[&str] = &["scope", "permission"];

fn split_space_delimited(claims: &mut BTreeMap<String, Vec<String>>, extra: &[String]) {
    let names = SPACE_DELIMITED
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str));
    for name in names {
        if let Some(values) = claims.get_mut(name)
            && let [one] = values.as_slice()
            && one.contains(' ')
        {
            *values = one.split_whitespace().map(String::from).collect();
        }
    }
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, Vec<String>>) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Array(a) => {
            let vals = a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect();
            out.insert(prefix.to_string(), vals);
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), vec![s.clone()]);
        }
        other => {
            out.insert(prefix.to_string(), vec![other.to_string()]);
        }
    }
}

impl JwtRules {
    /// The rules with their inline JWKS; a JWKS that does not parse leaves
    /// that rule without keys (its tokens are refused).
    pub fn new(rules: &[pb::JwtRule]) -> Self {
        JwtRules {
            keys: rules
                .iter()
                .map(|r| {
                    serde_json::from_str::<JwkSet>(&r.jwks)
                        .ok()
                        .filter(|_| !r.jwks.is_empty())
                })
                .collect(),
            locations: rules.iter().map(locations).collect(),
            rules: rules.to_vec(),
        }
    }

    /// Rule `index`.
    pub fn rule(&self, index: usize) -> Option<&pb::JwtRule> {
        self.rules.get(index)
    }

    /// `(index, uri, fetch timeout)` of every rule whose keys come from a
    /// `jwksUri` (the timeout is the rule's `timeout`, else Istio's 5 s).
    pub fn remote_keys(&self) -> Vec<(usize, String, std::time::Duration)> {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.jwks.is_empty() && !r.jwks_uri.is_empty())
            .map(|(i, r)| {
                let ms = if r.jwks_fetch_timeout_ms == 0 {
                    5000
                } else {
                    r.jwks_fetch_timeout_ms
                };
                (i, r.jwks_uri.clone(), std::time::Duration::from_millis(ms))
            })
            .collect()
    }

    /// Supplies the keys fetched from rule `index`'s `jwksUri`.
    pub fn set_keys(&mut self, index: usize, keys: JwkSet) {
        if let Some(k) = self.keys.get_mut(index) {
            *k = Some(keys);
        }
    }

    /// Finds and checks the request's token. `Ok(None)`: no token.
    pub fn authenticate(
        &self,
        headers: &BTreeMap<String, String>,
        query: &BTreeMap<String, String>,
    ) -> Result<Option<Authenticated>, JwtError> {
        for at in &self.locations {
            let found = at
                .headers
                .iter()
                .find_map(|(h, prefix)| {
                    headers
                        .get(h)
                        .and_then(|v| v.strip_prefix(prefix.as_str()))
                        .map(|t| (t.trim().to_string(), Some(h.clone())))
                })
                .or_else(|| {
                    at.params
                        .iter()
                        .find_map(|p| query.get(p).map(|t| (t.clone(), None)))
                })
                .or_else(|| {
                    let jar = headers.get("cookie")?;
                    at.cookies
                        .iter()
                        .find_map(|c| cookie(jar, c).map(|t| (t.to_string(), None)))
                });
            if let Some((token, from_header)) = found {
                return self.check(&token, from_header).map(Some);
            }
        }
        Ok(None)
    }

    fn check(&self, token: &str, from_header: Option<String>) -> Result<Authenticated, JwtError> {
        let header = decode_header(token).map_err(|_| JwtError::Malformed)?;
        let payload_b64 = token
            .split('.')
            .nth(1)
            .ok_or(JwtError::Malformed)?
            .to_string();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload_b64.trim_end_matches('='))
            .map_err(|_| JwtError::Malformed)?;
        let unverified: serde_json::Value =
            serde_json::from_slice(&raw).map_err(|_| JwtError::Malformed)?;
        let iss = unverified
            .get("iss")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let (index, rule) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.issuer == iss)
            .ok_or_else(|| JwtError::UnknownIssuer(iss.clone()))?;
        let keys = self
            .keys
            .get(index)
            .and_then(|k| k.as_ref())
            .ok_or(JwtError::NoKey)?;
        let candidates: Vec<_> = keys
            .keys
            .iter()
            .filter(|k| header.kid.is_none() || k.common.key_id == header.kid)
            .collect();
        if candidates.is_empty() {
            return Err(JwtError::NoKey);
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[rule.issuer.as_str()]);
        if rule.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&rule.audiences);
        }
        validation.set_required_spec_claims::<&str>(&[]);
        // Envoy checks `nbf` as well as `exp` (60 s clock skew both ways).
        validation.validate_nbf = true;
        let mut last = JwtError::NoKey;
        for jwk in candidates {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match decode::<serde_json::Value>(token, &key, &validation) {
                Ok(data) => {
                    let mut claims = BTreeMap::new();
                    flatten("", &data.claims, &mut claims);
                    split_space_delimited(&mut claims, &rule.space_delimited_claims);
                    let sub = data
                        .claims
                        .get("sub")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default();
                    return Ok(Authenticated {
                        request_principal: format!("{iss}/{sub}"),
                        issuer_subject: (iss.to_string(), sub.to_string()),
                        claims,
                        payload_b64,
                        rule: index,
                        from_header,
                        claim_headers: claim_headers(rule, &data.claims),
                    });
                }
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidAudience) => {
                    last = JwtError::AudienceNotAllowed
                }
                Err(e) => last = JwtError::Invalid(e.to_string()),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &[u8] = b"a test secret that is long enough";

    fn jwks() -> String {
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
        format!(r#"{{"keys":[{{"kty":"oct","kid":"k1","alg":"HS256","k":"{k}"}}]}}"#)
    }

    fn rule() -> pb::JwtRule {
        pb::JwtRule {
            issuer: "https://issuer.example".into(),
            audiences: vec!["reviews".into()],
            jwks: jwks(),
            ..Default::default()
        }
    }

    fn token(claims: serde_json::Value, secret: &[u8]) -> String {
        let mut h = Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("k1".into());
        encode(&h, &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn bearer(t: &str) -> BTreeMap<String, String> {
        [("authorization".to_string(), format!("Bearer {t}"))].into()
    }

    #[test]
    fn valid_invalid_and_missing_tokens() {
        let rules = JwtRules::new(&[rule()]);
        let none = BTreeMap::new();
        let good = token(
            serde_json::json!({"iss": "https://issuer.example", "sub": "alice", "aud": "reviews",
                               "exp": now() + 60, "groups": ["dev", "admin"], "org": {"team": "a"}}),
            SECRET,
        );
        let ok = rules.authenticate(&bearer(&good), &none).unwrap().unwrap();
        assert_eq!(ok.request_principal, "https://issuer.example/alice");
        assert_eq!(
            ok.claims["groups"],
            vec!["dev".to_string(), "admin".to_string()]
        );
        assert_eq!(ok.claims["org.team"], vec!["a".to_string()]);
        assert_eq!(ok.from_header.as_deref(), Some("authorization"));
        // Also from ?access_token=.
        let q: BTreeMap<String, String> = [("access_token".to_string(), good.clone())].into();
        assert!(rules.authenticate(&none, &q).unwrap().is_some());
        // Missing: passes, unauthenticated.
        assert_eq!(rules.authenticate(&none, &none).unwrap(), None);

        let cases = [
            (
                token(
                    serde_json::json!({"iss": "https://issuer.example", "sub": "a", "aud": "reviews", "exp": now() - 120}),
                    SECRET,
                ),
                "expired",
            ),
            (
                token(
                    serde_json::json!({"iss": "https://issuer.example", "sub": "a", "aud": "reviews",
                                       "exp": now() + 600, "nbf": now() + 300}),
                    SECRET,
                ),
                "not yet valid (nbf)",
            ),
            (
                token(
                    serde_json::json!({"iss": "https://issuer.example", "sub": "a", "aud": "reviews", "exp": now() + 60}),
                    b"another secret, also long enough",
                ),
                "signature",
            ),
        ];
        for (t, why) in cases {
            assert!(
                matches!(
                    rules.authenticate(&bearer(&t), &none),
                    Err(JwtError::Invalid(_))
                ),
                "{why}"
            );
        }
        // Authentic, but for another audience: its own error (403).
        let other_aud = token(
            serde_json::json!({"iss": "https://issuer.example", "sub": "a", "aud": "other", "exp": now() + 60}),
            SECRET,
        );
        assert_eq!(
            rules.authenticate(&bearer(&other_aud), &none),
            Err(JwtError::AudienceNotAllowed)
        );
        // `scope` and `permission` are split at spaces; other claims are not.
        let scoped = token(
            serde_json::json!({"iss": "https://issuer.example", "sub": "a", "aud": "reviews", "exp": now() + 60,
                               "scope": "read write", "permission": "a b", "name": "Ada Lovelace"}),
            SECRET,
        );
        let ok = rules
            .authenticate(&bearer(&scoped), &none)
            .unwrap()
            .unwrap();
        assert_eq!(
            ok.claims["scope"],
            vec!["read".to_string(), "write".to_string()]
        );
        assert_eq!(
            ok.claims["permission"],
            vec!["a".to_string(), "b".to_string()]
        );
        assert_eq!(ok.claims["name"], vec!["Ada Lovelace".to_string()]);
        let stranger = token(
            serde_json::json!({"iss": "https://evil", "sub": "a"}),
            SECRET,
        );
        assert_eq!(
            rules.authenticate(&bearer(&stranger), &none),
            Err(JwtError::UnknownIssuer("https://evil".into()))
        );
        assert_eq!(
            rules.authenticate(&bearer("not.a.jwt"), &none),
            Err(JwtError::Malformed)
        );
    }

    #[test]
    fn jwks_uri_rules_need_their_keys() {
        let mut r = rule();
        r.jwks.clear();
        r.jwks_uri = "http://jwks.local/keys".into();
        let mut rules = JwtRules::new(&[r]);
        let none = BTreeMap::new();
        let t = token(
            serde_json::json!({"iss": "https://issuer.example", "sub": "bob", "aud": "reviews", "exp": now() + 60}),
            SECRET,
        );
        assert_eq!(rules.authenticate(&bearer(&t), &none), Err(JwtError::NoKey));
        rules.set_keys(0, serde_json::from_str(&jwks()).unwrap());
        assert!(rules.authenticate(&bearer(&t), &none).unwrap().is_some());
    }

    #[test]
    fn custom_header_location() {
        let mut r = rule();
        r.from_headers = vec![pb::JwtHeader {
            name: "X-Jwt".into(),
            prefix: String::new(),
        }];
        let rules = JwtRules::new(&[r]);
        let t = token(
            serde_json::json!({"iss": "https://issuer.example", "sub": "c", "aud": "reviews", "exp": now() + 60}),
            SECRET,
        );
        let none = BTreeMap::new();
        assert_eq!(
            rules.authenticate(&bearer(&t), &none).unwrap(),
            None,
            "Authorization is not looked at"
        );
        let h: BTreeMap<String, String> = [("x-jwt".to_string(), t)].into();
        assert!(rules.authenticate(&h, &none).unwrap().is_some());
    }

    #[test]
    fn cookies_claims_to_headers_and_more_space_delimited_claims() {
        let mut r = rule();
        r.from_cookies = vec!["session".into()];
        r.space_delimited_claims = vec!["roles".into()];
        r.output_claim_to_headers = vec![
            pb::ClaimToHeader {
                header: "x-sub".into(),
                claim: "sub".into(),
            },
            pb::ClaimToHeader {
                header: "x-team".into(),
                claim: "org.team".into(),
            },
            pb::ClaimToHeader {
                header: "x-level".into(),
                claim: "level".into(),
            },
            pb::ClaimToHeader {
                header: "x-groups".into(),
                claim: "groups".into(),
            },
        ];
        let rules = JwtRules::new(&[r]);
        let t = token(
            serde_json::json!({"iss": "https://issuer.example", "sub": "c", "aud": "reviews",
                               "exp": now() + 60, "roles": "admin dev", "scope": "read write",
                               "org": {"team": "blue"}, "level": 3, "groups": ["a"]}),
            SECRET,
        );
        let none = BTreeMap::new();
        assert_eq!(
            rules.authenticate(&bearer(&t), &none).unwrap(),
            None,
            "fromCookies alone: Authorization is not looked at"
        );
        // Two Cookie headers arrive joined with ','.
        let jar: BTreeMap<String, String> =
            [("cookie".to_string(), format!("theme=dark; a=b,session={t}"))].into();
        let ok = rules
            .authenticate(&jar, &none)
            .unwrap()
            .expect("token from the cookie");
        assert_eq!(ok.from_header, None);
        assert_eq!(
            ok.claims["roles"],
            vec!["admin".to_string(), "dev".to_string()]
        );
        assert_eq!(
            ok.claims["scope"],
            vec!["read".to_string(), "write".to_string()]
        );
        assert_eq!(
            ok.claim_headers,
            vec![
                ("x-sub".to_string(), "c".to_string()),
                ("x-team".to_string(), "blue".to_string()),
                ("x-level".to_string(), "3".to_string()),
            ],
            "a list claim is not copied"
        );
        let other: BTreeMap<String, String> =
            [("cookie".to_string(), format!("sessionx={t}"))].into();
        assert_eq!(rules.authenticate(&other, &none).unwrap(), None);
    }
}
