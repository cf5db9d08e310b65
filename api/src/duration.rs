//! Durations as Istio writes them: `1s`, `1.5s`, `250ms`, `10us`, `2m`, `1h`
//! (protobuf Duration JSON and Go forms).

use std::time::Duration;

/// Parses an Istio duration; `None` when it is not one.
pub fn parse(s: &str) -> Option<Duration> {
    let s = s.trim();
    let units: [(&str, f64); 6] = [
        ("ms", 1e-3),
        ("us", 1e-6),
        ("ns", 1e-9),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ];
    let (num, scale) = units
        .iter()
        .find_map(|(u, scale)| s.strip_suffix(u).map(|n| (n, *scale)))?;
    let n: f64 = num.parse().ok()?;
    (n.is_finite() && n >= 0.0).then(|| Duration::from_secs_f64(n * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_forms() {
        assert_eq!(parse("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("10"), None);
        assert_eq!(parse("-1s"), None);
        assert_eq!(parse("fast"), None);
    }
}
