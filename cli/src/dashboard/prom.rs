//! Reading the Prometheus text exposition the proxies serve on `:15020`:
//! one sample per line, `name{label="value",...} value`.

use std::collections::BTreeMap;

/// One sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name (with `_total`, `_bucket`, ... as exposed).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// A label's value ("" when absent).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Every sample in `text`; comments and lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(sample)
        .collect()
}

fn sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i..]),
        None => {
            let (n, v) = line.split_once(' ')?;
            return Some(Sample {
                name: n.to_string(),
                labels: BTreeMap::new(),
                value: value(v)?,
            });
        }
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest[1..].char_indices().peekable();
    let body = &rest[1..];
    let mut end = None;
    while let Some((start, c)) = chars.next() {
        if c == '}' {
            end = Some(start);
            break;
        }
        if c == ',' || c == ' ' {
            continue;
        }
        // key
        let mut key_end = start;
        for (i, c) in chars.by_ref() {
            if c == '=' {
                key_end = i;
                break;
            }
        }
        let key = body[start..key_end].to_string();
        // opening quote
        if chars.next().map(|(_, c)| c) != Some('"') {
            return None;
        }
        let mut val = String::new();
        loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => val.push('\n'),
                    other => val.push(other),
                },
                (_, '"') => break,
                (_, c) => val.push(c),
            }
        }
        labels.insert(key, val);
    }
    let end = end?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value: value(&body[end + 1..])?,
    })
}

fn value(v: &str) -> Option<f64> {
    // A timestamp may follow the value.
    v.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labels_with_escapes_and_plain_samples() {
        let s = parse(
            "# HELP x y\nistio_requests_total{reporter=\"waypoint\",path=\"a\\\"b,c\"} 3\nup 1\nbad{x=\"1\" 2\n",
        );
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].label("reporter"), "waypoint");
        assert_eq!(s[0].label("path"), "a\"b,c");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].name, "up");
        assert_eq!(s[1].label("none"), "");
    }
}
