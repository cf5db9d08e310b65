//! Request path normalization, Istio's `meshConfig.pathNormalization`: the
//! path that authorization policy and routing see, and that goes upstream.
//! Without it `/public/../admin`, `/./admin` or `/%61dmin` would reach
//! `/admin` while a rule on `/admin` never saw them.
//!
//! `BASE` (the default) is what Envoy's `normalize_path` does: RFC 3986
//! normalization — percent-encoded unreserved characters decoded, other
//! escapes upper-cased, `.` and `..` segments removed — with backslashes read
//! as slashes. `MERGE_SLASHES` also collapses `//`; `DECODE_AND_MERGE_SLASHES`
//! first decodes `%2F` and `%5C` to `/` and `\`. `NONE` leaves the path alone.

use std::str::FromStr;

/// Istio's `pathNormalization.normalization` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PathNormalization {
    /// No normalization (not recommended: rules see raw paths).
    None,
    /// RFC 3986 + backslashes (Istio's default).
    #[default]
    Base,
    /// `Base`, then `//` → `/`.
    MergeSlashes,
    /// `%2F`/`%5C` decoded, then `MergeSlashes`.
    DecodeAndMergeSlashes,
}

/// A `pathNormalization` value that is not one of Istio's.
#[derive(Debug, thiserror::Error)]
#[error("unknown path normalization {0:?} (NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)")]
pub struct UnknownNormalization(String);

impl PathNormalization {
    /// The mesh config's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            PathNormalization::None => "NONE",
            PathNormalization::Base => "BASE",
            PathNormalization::MergeSlashes => "MERGE_SLASHES",
            PathNormalization::DecodeAndMergeSlashes => "DECODE_AND_MERGE_SLASHES",
        }
    }
}

impl FromStr for PathNormalization {
    type Err = UnknownNormalization;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "NONE" => PathNormalization::None,
            "BASE" | "DEFAULT" => PathNormalization::Base,
            "MERGE_SLASHES" => PathNormalization::MergeSlashes,
            "DECODE_AND_MERGE_SLASHES" => PathNormalization::DecodeAndMergeSlashes,
            other => return Err(UnknownNormalization(other.to_string())),
        })
    }
}

/// A path that cannot be normalized: the request is refused (400), as Envoy
/// refuses it, rather than matched in a form the rules did not expect.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("path {0:?} cannot be normalized")]
pub struct BadPath(pub String);

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes `%XX` of unreserved characters (and, with `slashes`, of `/` and
/// `\`); upper-cases the hex of the others.
fn decode(path: &str, slashes: bool) -> String {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            let c = h * 16 + l;
            if unreserved(c) || (slashes && matches!(c, b'/' | b'\\')) {
                out.push(c);
            } else {
                out.push(b'%');
                out.extend(b[i + 1..i + 3].iter().map(u8::to_ascii_uppercase));
            }
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    // Only ASCII bytes were replaced by ASCII bytes.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// RFC 3986 §5.2.4 on an absolute path, segment by segment.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                // A trailing dot segment leaves the directory: `/a/..` → `/`.
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

impl PathNormalization {
    /// The normalized form of `path` (no query). `*` (OPTIONS) passes as is.
    pub fn apply(self, path: &str) -> Result<String, BadPath> {
        if self == PathNormalization::None || path == "*" {
            return Ok(path.to_string());
        }
        let decoded = decode(path, self == PathNormalization::DecodeAndMergeSlashes);
        let slashed = decoded.replace('\\', "/");
        if !slashed.starts_with('/') {
            return Err(BadPath(path.to_string()));
        }
        let clean = remove_dot_segments(&slashed);
        Ok(match self {
            PathNormalization::MergeSlashes | PathNormalization::DecodeAndMergeSlashes => {
                merge_slashes(&clean)
            }
            _ => clean,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::PathNormalization as N;

    #[test]
    fn base_table() {
        for (raw, want) in [
            ("/public/../private", "/private"),
            ("/./admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/a/%2E/b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/a\\..\\admin", "/admin"),
            ("/users\\123", "/users/123"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2Fb/../c", "/c"),
            ("/a//b", "/a//b"),
            ("/%7euser", "/~user"),
            ("/%zz", "/%zz"),
            ("/a%", "/a%"),
            ("/", "/"),
            ("*", "*"),
        ] {
            assert_eq!(N::Base.apply(raw).as_deref(), Ok(want), "{raw}");
        }
        assert!(N::Base.apply("admin").is_err());
    }

    #[test]
    fn slash_options() {
        assert_eq!(N::MergeSlashes.apply("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(N::MergeSlashes.apply("/a%2Fb").unwrap(), "/a%2Fb");
        assert_eq!(N::DecodeAndMergeSlashes.apply("/a%2F%2fb").unwrap(), "/a/b");
        assert_eq!(
            N::DecodeAndMergeSlashes
                .apply("/public%2F..%2Fadmin")
                .unwrap(),
            "/admin"
        );
        assert_eq!(
            N::DecodeAndMergeSlashes.apply("/x%5C..%5Cadmin").unwrap(),
            "/admin"
        );
        assert_eq!(N::None.apply("/a/../b").unwrap(), "/a/../b");
        assert_eq!("MERGE_SLASHES".parse::<N>().unwrap(), N::MergeSlashes);
        assert!("merge".parse::<N>().is_err());
    }
}
