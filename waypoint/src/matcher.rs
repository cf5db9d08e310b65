//! String matching as Istio writes it: VirtualService `StringMatch`
//! (exact, prefix, RE2 regex with full match) compiled once per config, and
//! AuthorizationPolicy values (`*`, `prefix*`, `*suffix`, exact).

use ambit_api::xds::proto::l7 as pb;

/// A compiled `StringMatch`.
#[derive(Clone, Debug)]
pub enum Matcher {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Matches the whole value.
    Regex(regex::Regex),
}

/// A regex in the config that does not compile (the controller validates
/// them, so this means a config from elsewhere).
#[derive(Debug, thiserror::Error)]
#[error("bad regex {pattern:?}: {message}")]
pub struct MatcherError {
    /// The pattern.
    pub pattern: String,
    /// The compiler's message.
    pub message: String,
}

impl Matcher {
    /// Compiles `m`; `None` when it sets no kind (matches nothing).
    pub fn compile(m: &pb::StringMatch) -> Result<Option<Self>, MatcherError> {
        use pb::string_match::Kind;
        Ok(match &m.kind {
            None => None,
            Some(Kind::Exact(s)) => Some(Matcher::Exact(s.clone())),
            Some(Kind::Prefix(s)) => Some(Matcher::Prefix(s.clone())),
            Some(Kind::Regex(r)) => Some(Matcher::Regex(
                regex::Regex::new(&format!("^(?:{r})$")).map_err(|e| MatcherError {
                    pattern: r.clone(),
                    message: e.to_string(),
                })?,
            )),
        })
    }

    /// Does `value` match?
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(s) => value == s,
            Matcher::Prefix(s) => value.starts_with(s.as_str()),
            Matcher::Regex(r) => r.is_match(value),
        }
    }
}

/// AuthorizationPolicy value matching: `*` (any non-empty), `prefix*`,
/// `*suffix`, else exact. `case_insensitive` for hosts.
pub fn wildcard(pattern: &str, value: &str, case_insensitive: bool) -> bool {
    let (p, v) = if case_insensitive {
        (pattern.to_ascii_lowercase(), value.to_ascii_lowercase())
    } else {
        (pattern.to_string(), value.to_string())
    };
    if p == "*" {
        !v.is_empty()
    } else if let Some(prefix) = p.strip_suffix('*') {
        v.starts_with(prefix)
    } else if let Some(suffix) = p.strip_prefix('*') {
        v.ends_with(suffix)
    } else {
        v == p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: pb::string_match::Kind) -> Matcher {
        Matcher::compile(&pb::StringMatch { kind: Some(kind) })
            .unwrap()
            .unwrap()
    }

    #[test]
    fn string_matches() {
        use pb::string_match::Kind;
        assert!(m(Kind::Exact("/a".into())).matches("/a"));
        assert!(!m(Kind::Exact("/a".into())).matches("/a/b"));
        assert!(m(Kind::Prefix("/api".into())).matches("/api/v1"));
        let r = m(Kind::Regex("/v[0-9]+".into()));
        assert!(r.matches("/v12"));
        assert!(!r.matches("/v12/x"), "regex is a full match");
        assert!(
            Matcher::compile(&pb::StringMatch {
                kind: Some(Kind::Regex("(".into()))
            })
            .is_err()
        );
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("*", "x", false));
        assert!(!wildcard("*", "", false));
        assert!(wildcard("/reviews/*", "/reviews/1", false));
        assert!(wildcard(
            "*.svc.cluster.local",
            "a.b.svc.cluster.local",
            false
        ));
        assert!(wildcard("Reviews.Example.COM", "reviews.example.com", true));
        assert!(!wildcard("GET", "get", false));
    }
}
