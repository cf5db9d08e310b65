//! VirtualService route selection as Istio documents it: `http` routes in
//! order, the first whose any `match` holds wins (no `match` = everything);
//! inside a match every condition given must hold. A route's destinations
//! are picked by weight. Pure: the caller supplies the request's facts and a
//! random number.

use std::collections::BTreeMap;

use ambit_api::xds::proto::l7 as pb;

use crate::matcher::{Matcher, MatcherError};

/// What routing looks at in a request.
#[derive(Clone, Debug, Default)]
pub struct RequestFacts {
    /// Method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// `:authority` / `Host`.
    pub authority: String,
    /// Headers, names lower-case.
    pub headers: BTreeMap<String, String>,
    /// Query parameters.
    pub query: BTreeMap<String, String>,
    /// The calling workload's namespace (from its authenticated identity).
    pub source_namespace: String,
    /// The service port the request was sent to.
    pub port: u32,
}

struct CompiledMatch {
    uri: Option<Matcher>,
    /// `ignoreUriCase` on an exact/prefix `uri` (Envoy's `case_sensitive:
    /// false` does not reach regexes): the pattern is lower-cased here and
    /// the path at match time.
    uri_ignore_case: bool,
    method: Option<Matcher>,
    authority: Option<Matcher>,
    headers: Vec<(String, Matcher)>,
    query: Vec<(String, Matcher)>,
    /// A `sourceLabels` match: a waypoint does not know its clients'
    /// labels, so (as Istio's waypoint drops it) this match never holds.
    never: bool,
    source_namespace: String,
    port: u32,
    /// `withoutHeaders`: holds when the header is absent or (with a
    /// matcher) its value does not match: Istio's inverted header matcher.
    without_headers: Vec<(String, Option<Matcher>)>,
}

impl CompiledMatch {
    fn compile(m: &pb::HttpMatch) -> Result<Self, MatcherError> {
        let opt = |s: &Option<pb::StringMatch>| {
            s.as_ref()
                .map(Matcher::compile)
                .transpose()
                .map(Option::flatten)
        };
        let map = |h: &std::collections::HashMap<String, pb::StringMatch>| -> Result<Vec<(String, Matcher)>, MatcherError> {
            let mut v = Vec::new();
            for (k, s) in h {
                if let Some(m) = Matcher::compile(s)? {
                    v.push((k.to_ascii_lowercase(), m));
                }
            }
            v.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(v)
        };
        use pb::string_match::Kind;
        let uri_ignore_case = m.ignore_uri_case
            && matches!(
                m.uri.as_ref().and_then(|u| u.kind.as_ref()),
                Some(Kind::Exact(_) | Kind::Prefix(_))
            );
        let uri = if uri_ignore_case {
            m.uri.as_ref().map(|u| pb::StringMatch {
                kind: match &u.kind {
                    Some(Kind::Exact(e)) => Some(Kind::Exact(e.to_ascii_lowercase())),
                    Some(Kind::Prefix(p)) => Some(Kind::Prefix(p.to_ascii_lowercase())),
                    other => other.clone(),
                },
            })
        } else {
            m.uri.clone()
        };
        let mut without_headers = Vec::new();
        for (k, v) in &m.without_headers {
            without_headers.push((k.to_ascii_lowercase(), Matcher::compile(v)?));
        }
        without_headers.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(CompiledMatch {
            uri: opt(&uri)?,
            uri_ignore_case,
            method: opt(&m.method)?,
            authority: opt(&m.authority)?,
            headers: map(&m.headers)?,
            query: map(&m.query_params)?,
            never: !m.source_labels.is_empty(),
            source_namespace: m.source_namespace.clone(),
            port: m.port,
            without_headers,
        })
    }

    fn matches(&self, r: &RequestFacts) -> bool {
        let one = |m: &Option<Matcher>, v: &str| m.as_ref().is_none_or(|m| m.matches(v));
        let uri_ok = if self.uri_ignore_case {
            one(&self.uri, &r.path.to_ascii_lowercase())
        } else {
            one(&self.uri, &r.path)
        };
        !self.never
            && uri_ok
            && one(&self.method, &r.method)
            && one(&self.authority, &r.authority)
            && self
                .headers
                .iter()
                .all(|(k, m)| r.headers.get(k).is_some_and(|v| m.matches(v)))
            && self
                .query
                .iter()
                .all(|(k, m)| r.query.get(k).is_some_and(|v| m.matches(v)))
            && (self.source_namespace.is_empty() || self.source_namespace == r.source_namespace)
            && (self.port == 0 || self.port == r.port)
            && self
                .without_headers
                .iter()
                .all(|(h, m)| match (r.headers.get(h), m) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(v), Some(m)) => !m.matches(v),
                })
    }
}

struct CompiledRoute {
    matches: Vec<CompiledMatch>,
    total_weight: u64,
    /// `rewrite.uriRegexRewrite`: pattern and replacement in the regex
    /// crate's syntax.
    regex_rewrite: Option<(regex::Regex, String)>,
    /// `corsPolicy.allowOrigins`, compiled.
    cors_origins: Vec<Matcher>,
}

/// Envoy's substitution (`\1` names group 1) in the regex crate's syntax
/// (`${1}`; a literal `$` doubled).
fn substitution(envoy: &str) -> String {
    let mut out = String::new();
    let mut chars = envoy.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut n = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    n.push(*d);
                    chars.next();
                }
                out.push_str(&format!("${{{n}}}"));
            }
            c => out.push(c),
        }
    }
    out
}

/// The destination `random` lands on when `dests` split `total` by weight
/// (all weights 0: the first).
pub fn pick_weighted(
    dests: &[pb::RouteDestination],
    total: u64,
    random: u64,
) -> Option<&pb::RouteDestination> {
    if total == 0 {
        return dests.first();
    }
    let mut pick = random % total;
    dests.iter().find(|d| {
        let w = u64::from(d.weight);
        if pick < w {
            true
        } else {
            pick -= w;
            false
        }
    })
}

/// An `L7Service`'s routes, compiled once per config version.
pub struct Router {
    service: pb::L7Service,
    routes: Vec<CompiledRoute>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("service", &self.service.hostname)
            .field("routes", &self.routes.len())
            .finish()
    }
}

/// The outcome of routing one request.
#[derive(Debug, PartialEq)]
pub enum Decision<'a> {
    /// Route `index` matched; send to `destination` (None: the route
    /// redirects or answers directly).
    Route {
        /// Index in `http`.
        index: usize,
        /// The route.
        route: &'a pb::HttpRoute,
        /// The picked destination.
        destination: Option<&'a pb::RouteDestination>,
    },
    /// No VirtualService route applies: go to the service itself.
    Default,
    /// Routes exist but none matched: Istio answers 404.
    NoMatch,
}

impl Router {
    /// Compiles `service`'s routes.
    pub fn new(service: pb::L7Service) -> Result<Self, MatcherError> {
        let routes = service
            .http
            .iter()
            .map(|r| {
                Ok(CompiledRoute {
                    matches: r
                        .matches
                        .iter()
                        .map(CompiledMatch::compile)
                        .collect::<Result<_, _>>()?,
                    total_weight: r.route.iter().map(|d| u64::from(d.weight)).sum(),
                    cors_origins: r
                        .cors
                        .iter()
                        .flat_map(|c| &c.allow_origins)
                        .filter_map(|m| Matcher::compile(m).transpose())
                        .collect::<Result<_, _>>()?,
                    regex_rewrite: match r.rewrite.as_ref().filter(|w| !w.uri_regex.is_empty()) {
                        None => None,
                        Some(w) => Some((
                            regex::Regex::new(&w.uri_regex).map_err(|e| MatcherError {
                                pattern: w.uri_regex.clone(),
                                message: e.to_string(),
                            })?,
                            substitution(&w.uri_regex_rewrite),
                        )),
                    },
                })
            })
            .collect::<Result<_, MatcherError>>()?;
        Ok(Router { service, routes })
    }

    /// The service this router serves.
    pub fn service(&self) -> &pb::L7Service {
        &self.service
    }

    /// Route `index`'s compiled `corsPolicy.allowOrigins`.
    pub fn cors_origins(&self, index: usize) -> &[Matcher] {
        self.routes.get(index).map_or(&[], |r| &r.cors_origins)
    }

    /// Route `index`'s `uriRegexRewrite` applied to `path` (every match
    /// replaced, as Envoy's `regex_rewrite`); `None` when it has none.
    pub fn regex_rewrite(&self, index: usize, path: &str) -> Option<String> {
        let (re, to) = self.routes.get(index)?.regex_rewrite.as_ref()?;
        Some(re.replace_all(path, to.as_str()).into_owned())
    }

    /// Routes `req`; `random` picks among weighted destinations (any u64).
    pub fn route(&self, req: &RequestFacts, random: u64) -> Decision<'_> {
        if self.service.http.is_empty() {
            return Decision::Default;
        }
        for (index, (compiled, route)) in self.routes.iter().zip(&self.service.http).enumerate() {
            if !compiled.matches.is_empty() && !compiled.matches.iter().any(|m| m.matches(req)) {
                continue;
            }
            let destination = pick_weighted(&route.route, compiled.total_weight, random);
            return Decision::Route {
                index,
                route,
                destination,
            };
        }
        Decision::NoMatch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::string_match::Kind;

    fn sm(kind: Kind) -> Option<pb::StringMatch> {
        Some(pb::StringMatch { kind: Some(kind) })
    }

    fn dest(subset: &str, weight: u32) -> pb::RouteDestination {
        pb::RouteDestination {
            destination: Some(pb::Destination {
                host: "reviews.bookinfo.svc.cluster.local".into(),
                subset: subset.into(),
                port: 0,
            }),
            weight,
            headers: None,
        }
    }

    /// Bookinfo: `end-user: jason` → v2; `/reviews/legacy*` regex → v1;
    /// everything else 90/10 v1/v3.
    fn bookinfo() -> Router {
        let jason = pb::HttpMatch {
            headers: [(
                "end-user".to_string(),
                pb::StringMatch {
                    kind: Some(Kind::Exact("jason".into())),
                },
            )]
            .into(),
            ..Default::default()
        };
        let legacy = pb::HttpMatch {
            uri: sm(Kind::Regex("/reviews/legacy[0-9]*".into())),
            method: sm(Kind::Exact("GET".into())),
            ..Default::default()
        };
        Router::new(pb::L7Service {
            hostname: "reviews.bookinfo.svc.cluster.local".into(),
            http: vec![
                pb::HttpRoute {
                    name: "jason".into(),
                    matches: vec![jason],
                    route: vec![dest("v2", 100)],
                    ..Default::default()
                },
                pb::HttpRoute {
                    name: "legacy".into(),
                    matches: vec![legacy],
                    route: vec![dest("v1", 100)],
                    ..Default::default()
                },
                pb::HttpRoute {
                    name: "split".into(),
                    route: vec![dest("v1", 90), dest("v3", 10)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .unwrap()
    }

    fn subset(d: &Decision<'_>) -> (usize, String) {
        match d {
            Decision::Route {
                index,
                destination: Some(dst),
                ..
            } => (*index, dst.destination.as_ref().unwrap().subset.clone()),
            other => panic!("{other:?}"),
        }
    }

    fn facts(end_user: Option<&str>, method: &str, path: &str) -> RequestFacts {
        RequestFacts {
            method: method.into(),
            path: path.into(),
            headers: end_user
                .map(|u| [("end-user".to_string(), u.to_string())].into())
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn first_match_wins_table() {
        let r = bookinfo();
        // (end-user, method, path, random) → (route index, subset)
        type Case<'a> = (Option<&'a str>, &'a str, &'a str, u64, (usize, &'a str));
        let cases: &[Case<'_>] = &[
            (Some("jason"), "GET", "/reviews/1", 0, (0, "v2")),
            // Order: jason's header wins over the legacy path.
            (Some("jason"), "GET", "/reviews/legacy", 0, (0, "v2")),
            (Some("mary"), "GET", "/reviews/legacy7", 0, (1, "v1")),
            // Regex is a full match; method must match too.
            (Some("mary"), "GET", "/reviews/legacy7/x", 0, (2, "v1")),
            (None, "POST", "/reviews/legacy", 95, (2, "v3")),
            (None, "GET", "/", 89, (2, "v1")),
            (None, "GET", "/", 90, (2, "v3")),
            // Header names are case-insensitive (callers lower-case them);
            // values are not.
            (Some("Jason"), "GET", "/", 0, (2, "v1")),
        ];
        for (user, method, path, random, want) in cases {
            let got = subset(&r.route(&facts(*user, method, path), *random));
            assert_eq!(
                (got.0, got.1.as_str()),
                *want,
                "{method} {path} {user:?} r={random}"
            );
        }
    }

    /// A `sourceLabels` match never holds in a waypoint (Istio drops it):
    /// the request falls through to the next route.
    #[test]
    fn source_label_matches_never_hold() {
        let labelled = pb::HttpMatch {
            source_labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        };
        let r = Router::new(pb::L7Service {
            http: vec![
                pb::HttpRoute {
                    matches: vec![labelled],
                    route: vec![dest("v2", 100)],
                    ..Default::default()
                },
                pb::HttpRoute {
                    route: vec![dest("v1", 100)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            subset(&r.route(&facts(None, "GET", "/"), 0)),
            (1, "v1".into())
        );
    }

    #[test]
    fn weights_split_in_proportion() {
        let r = bookinfo();
        let f = facts(None, "GET", "/");
        let v3 = (0..1000u64)
            .filter(|i| subset(&r.route(&f, i.wrapping_mul(2654435761))).1 == "v3")
            .count();
        assert!((70..=130).contains(&v3), "v3 got {v3} of 1000");
    }

    #[test]
    fn no_routes_and_no_match() {
        let facts = RequestFacts::default();
        let empty = Router::new(pb::L7Service::default()).unwrap();
        assert_eq!(empty.route(&facts, 0), Decision::Default);
        let only_jason = Router::new(pb::L7Service {
            http: vec![bookinfo().service().http[0].clone()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(only_jason.route(&facts, 0), Decision::NoMatch);
    }

    /// `ignoreUriCase` (exact/prefix only, as Envoy's `case_sensitive`),
    /// `sourceNamespace`, and `withoutHeaders` (absent, or present with a
    /// value the matcher rejects).
    #[test]
    fn case_source_namespace_and_without_headers() {
        let m = |f: pb::HttpMatch| {
            Router::new(pb::L7Service {
                http: vec![pb::HttpRoute {
                    matches: vec![f],
                    route: vec![dest("v1", 100)],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .unwrap()
        };
        let hit = |r: &Router, f: &RequestFacts| matches!(r.route(f, 0), Decision::Route { .. });
        let prefix = m(pb::HttpMatch {
            uri: sm(Kind::Prefix("/Admin".into())),
            ignore_uri_case: true,
            ..Default::default()
        });
        assert!(hit(&prefix, &facts(None, "GET", "/aDMIN/x")));
        assert!(!hit(&prefix, &facts(None, "GET", "/public")));
        let regex = m(pb::HttpMatch {
            uri: sm(Kind::Regex("/admin".into())),
            ignore_uri_case: true,
            ..Default::default()
        });
        assert!(
            !hit(&regex, &facts(None, "GET", "/ADMIN")),
            "regexes stay case-sensitive"
        );
        let ns = m(pb::HttpMatch {
            source_namespace: "shop".into(),
            ..Default::default()
        });
        let from = |n: &str| RequestFacts {
            source_namespace: n.into(),
            ..Default::default()
        };
        assert!(hit(&ns, &from("shop")));
        assert!(!hit(&ns, &from("shopping")));
        let without = m(pb::HttpMatch {
            without_headers: [
                ("x-a".to_string(), pb::StringMatch { kind: None }),
                ("x-b".to_string(), sm(Kind::Exact("one".into())).unwrap()),
            ]
            .into(),
            ..Default::default()
        });
        let with = |h: &[(&str, &str)]| RequestFacts {
            headers: h
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        assert!(hit(&without, &with(&[])));
        assert!(hit(&without, &with(&[("x-b", "two")])));
        assert!(!hit(&without, &with(&[("x-b", "one")])));
        assert!(!hit(&without, &with(&[("x-a", "")])));
    }

    #[test]
    fn regex_rewrite_uses_envoy_substitution() {
        assert_eq!(substitution(r"/v2/\1/\12$"), "/v2/${1}/${12}$$");
        let r = Router::new(pb::L7Service {
            http: vec![pb::HttpRoute {
                route: vec![dest("v1", 100)],
                rewrite: Some(pb::Rewrite {
                    uri_regex: "^/api/v1/(.*)$".into(),
                    uri_regex_rewrite: r"/v2/\1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            r.regex_rewrite(0, "/api/v1/items").as_deref(),
            Some("/v2/items")
        );
        assert_eq!(r.regex_rewrite(0, "/other").as_deref(), Some("/other"));
    }
}
