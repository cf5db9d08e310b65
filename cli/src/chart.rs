//! Renders Ambit's Helm chart (`deploy/helm/ambit`) without Helm: the
//! subset of Helm's template language the chart uses, with Helm's meaning.
//!
//! * `{{ .Values.a.b }}`, `{{ .Release.Namespace }}`, `{{ .Release.Name }}`,
//!   `{{ .Chart.Version }}`, `{{ .Chart.AppVersion }}`;
//! * pipes `| quote`, `| toYaml`, `| indent N`, `| nindent N`, `| default X`
//!   and the prefix form `toYaml .Values.x`;
//! * `{{ if PIPELINE }}` / `{{ else }}` / `{{ end }}` with Helm's truth (false,
//!   0, "", null and empty lists and maps are false), `not`;
//! * `{{/* comments */}}` and the `{{-` / `-}}` whitespace trims.
//!
//! Anything else is an error naming the template and line: a chart that
//! this renderer cannot render exactly as Helm would is refused, never
//! rendered approximately. The chart renders the same with `helm template`.

use serde_json::Value;

/// Why a template could not be rendered.
#[derive(Debug, thiserror::Error)]
#[error("{template}:{line}: {message}")]
pub struct ChartError {
    /// The template file.
    pub template: String,
    /// 1-based line of the action.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// What templates see: `.Values`, `.Release`, `.Chart`.
#[derive(Clone, Debug)]
pub struct Context {
    /// The merged values.
    pub values: Value,
    /// `.Release.Name`.
    pub release_name: String,
    /// `.Release.Namespace`.
    pub release_namespace: String,
    /// `.Chart.Version`.
    pub chart_version: String,
    /// `.Chart.AppVersion`.
    pub app_version: String,
}

/// One piece of a parsed template.
#[derive(Debug)]
enum Node {
    Text(String),
    Output {
        pipeline: String,
        line: usize,
    },
    If {
        cond: String,
        line: usize,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// Text, then the action after it (its body and line), if any.
type Token = (String, Option<(String, usize)>);

/// An `if` being parsed: condition, line, then-branch, else-branch, and
/// whether `else` was seen.
struct OpenIf {
    cond: String,
    line: usize,
    then: Vec<Node>,
    otherwise: Vec<Node>,
    in_else: bool,
}

/// Splits `src` into text and actions, applying the trim markers.
fn lex(src: &str, template: &str) -> Result<Vec<Token>, ChartError> {
    let mut out: Vec<Token> = Vec::new();
    let mut rest = src;
    let mut line = 1;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = rest[..start].to_string();
        if trim_next {
            text = text.trim_start().to_string();
        }
        let after = &rest[start + 2..];
        let trim_before =
            after.starts_with('-') && after[1..].starts_with(|c: char| c.is_ascii_whitespace());
        if trim_before {
            text = text.trim_end().to_string();
        }
        line += rest[..start].matches('\n').count();
        let body_start = if trim_before { 1 } else { 0 };
        let Some(end) = after.find("}}") else {
            return Err(ChartError {
                template: template.into(),
                line,
                message: "unclosed {{".into(),
            });
        };
        let mut body = &after[body_start..end];
        trim_next = body.ends_with('-') && body[..body.len() - 1].ends_with(char::is_whitespace);
        if trim_next {
            body = &body[..body.len() - 1];
        }
        out.push((text, Some((body.trim().to_string(), line))));
        line += after[..end].matches('\n').count();
        rest = &after[end + 2..];
    }
    let mut text = rest.to_string();
    if trim_next {
        text = text.trim_start().to_string();
    }
    out.push((text, None));
    Ok(out)
}

fn parse(src: &str, template: &str) -> Result<Vec<Node>, ChartError> {
    let tokens = lex(src, template)?;
    let mut stack: Vec<OpenIf> = Vec::new();
    let mut top: Vec<Node> = Vec::new();
    let push = |stack: &mut Vec<OpenIf>, top: &mut Vec<Node>, node: Node| match stack.last_mut() {
        Some(open) if open.in_else => open.otherwise.push(node),
        Some(open) => open.then.push(node),
        None => top.push(node),
    };
    let err = |line: usize, message: String| ChartError {
        template: template.into(),
        line,
        message,
    };
    for (text, action) in tokens {
        if !text.is_empty() {
            push(&mut stack, &mut top, Node::Text(text));
        }
        let Some((body, line)) = action else { continue };
        if body.starts_with("/*") && body.ends_with("*/") {
            continue;
        }
        if let Some(cond) = body.strip_prefix("if ") {
            stack.push(OpenIf {
                cond: cond.trim().to_string(),
                line,
                then: Vec::new(),
                otherwise: Vec::new(),
                in_else: false,
            });
        } else if body == "else" {
            match stack.last_mut() {
                Some(open) if !open.in_else => open.in_else = true,
                _ => return Err(err(line, "`else` without an open `if`".into())),
            }
        } else if body == "end" {
            let Some(open) = stack.pop() else {
                return Err(err(line, "`end` without an open `if`".into()));
            };
            push(
                &mut stack,
                &mut top,
                Node::If {
                    cond: open.cond,
                    line: open.line,
                    then: open.then,
                    otherwise: open.otherwise,
                },
            );
        } else {
            push(
                &mut stack,
                &mut top,
                Node::Output {
                    pipeline: body,
                    line,
                },
            );
        }
    }
    if let Some(open) = stack.last() {
        return Err(err(open.line, "`if` without `end`".into()));
    }
    Ok(top)
}

/// Helm's truth.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A value as `{{ }}` prints it: strings bare, numbers and bools as
/// written, null as nothing... except Helm prints `<no value>` for a
/// missing key, which is always a chart bug: refused.
fn print(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) => Some(v.to_string()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

fn to_yaml(v: &Value) -> Result<String, String> {
    let text = serde_yaml::to_string(v).map_err(|e| e.to_string())?;
    Ok(text.trim_end().to_string())
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Context {
    fn lookup(&self, path: &str) -> Result<Value, String> {
        let mut parts = path.trim_start_matches('.').split('.');
        let root = parts.next().unwrap_or_default();
        let fixed = |s: &str| Ok(Value::String(s.to_string()));
        match root {
            "Values" => {
                let mut v = &self.values;
                for p in parts {
                    v = v.get(p).unwrap_or(&Value::Null);
                }
                Ok(v.clone())
            }
            "Release" => match parts.next() {
                Some("Name") => fixed(&self.release_name),
                Some("Namespace") => fixed(&self.release_namespace),
                other => Err(format!("unknown .Release field {other:?}")),
            },
            "Chart" => match parts.next() {
                Some("Version") => fixed(&self.chart_version),
                Some("AppVersion") => fixed(&self.app_version),
                other => Err(format!("unknown .Chart field {other:?}")),
            },
            _ => Err(format!("unknown value {path}")),
        }
    }

    /// A `.Values...` path, or a literal (a quoted string, a number, a
    /// boolean).
    fn operand(&self, word: &str) -> Result<Value, String> {
        if word.starts_with('.') {
            self.lookup(word)
        } else {
            serde_json::from_str(word).map_err(|e| format!("`{word}`: {e}"))
        }
    }

    /// Evaluates a pipeline to a value (strings for formatted output).
    fn eval(&self, pipeline: &str) -> Result<Value, String> {
        let mut stages = pipeline.split('|').map(str::trim);
        let first = stages.next().unwrap_or_default();
        let words: Vec<&str> = first.split_whitespace().collect();
        let mut value = match words.as_slice() {
            [path] if path.starts_with('.') => self.lookup(path)?,
            ["toYaml", path] => Value::String(to_yaml(&self.lookup(path)?)?),
            ["not", path] => Value::Bool(!truthy(&self.lookup(path)?)),
            [lit] if lit.starts_with('"') => self.operand(lit)?,
            _ => return Err(format!("unsupported expression `{first}`")),
        };
        for stage in stages {
            let words: Vec<&str> = stage.split_whitespace().collect();
            value = match words.as_slice() {
                ["quote"] => Value::String(
                    serde_json::to_string(&print(&value).unwrap_or_default())
                        .map_err(|e| e.to_string())?,
                ),
                ["toYaml"] => Value::String(to_yaml(&value)?),
                ["indent", n] | ["nindent", n] => {
                    let n: usize = n.parse().map_err(|_| format!("bad width {n}"))?;
                    let text = match &value {
                        Value::String(s) => s.clone(),
                        other => print(other).ok_or("indent of a non-scalar")?,
                    };
                    let body = indent(&text, n);
                    Value::String(if words[0] == "nindent" {
                        format!("\n{body}")
                    } else {
                        body
                    })
                }
                ["default", operand] => {
                    if truthy(&value) {
                        value
                    } else {
                        self.operand(operand)?
                    }
                }
                _ => return Err(format!("unsupported function `{stage}`")),
            };
        }
        Ok(value)
    }

    fn render_nodes(
        &self,
        nodes: &[Node],
        template: &str,
        out: &mut String,
    ) -> Result<(), ChartError> {
        for n in nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Output { pipeline, line } => {
                    let err = |message: String| ChartError {
                        template: template.into(),
                        line: *line,
                        message,
                    };
                    let v = self.eval(pipeline).map_err(err)?;
                    let text = print(&v).ok_or_else(|| {
                        err(format!(
                            "`{pipeline}` has no value (Helm would print <no value>): set it in values.yaml"
                        ))
                    })?;
                    out.push_str(&text);
                }
                Node::If {
                    cond,
                    line,
                    then,
                    otherwise,
                } => {
                    let v = self.eval(cond).map_err(|message| ChartError {
                        template: template.into(),
                        line: *line,
                        message,
                    })?;
                    let branch = if truthy(&v) { then } else { otherwise };
                    self.render_nodes(branch, template, out)?;
                }
            }
        }
        Ok(())
    }

    /// Renders template `name` with source `src`.
    pub fn render(&self, name: &str, src: &str) -> Result<String, ChartError> {
        let nodes = parse(src, name)?;
        let mut out = String::new();
        self.render_nodes(&nodes, name, &mut out)?;
        Ok(out)
    }
}

/// Merges `overlay` into `base` (maps deeply; anything else replaced), as
/// Helm merges `-f` files and `--set` over the chart's values.
pub fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

/// `--set a.b=c`: the value as Helm's `--set` reads it (true/false, an
/// integer, null, else a string).
pub fn set_value(values: &mut Value, assignment: &str) -> Result<(), String> {
    let (path, raw) = assignment
        .split_once('=')
        .ok_or_else(|| format!("--set {assignment}: want KEY=VALUE"))?;
    let value = match raw {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" => Value::Null,
        _ => raw
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(raw.to_string())),
    };
    let mut overlay = value;
    for key in path.rsplit('.') {
        if key.is_empty() {
            return Err(format!("--set {assignment}: empty key"));
        }
        overlay = serde_json::json!({ key: overlay });
    }
    merge(values, overlay);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(values: Value) -> Context {
        Context {
            values,
            release_name: "ambit".into(),
            release_namespace: "istio-system".into(),
            chart_version: "0.1.0".into(),
            app_version: "0.1.0".into(),
        }
    }

    #[test]
    fn values_pipes_and_trims_as_helm() {
        let c = ctx(json!({"a": {"b": "x", "n": 2, "on": true, "list": [], "res": {"cpu": "1"}}}));
        let t = "k: {{ .Values.a.b }}\nn: {{ .Values.a.n }}\nq: {{ .Values.a.b | quote }}\nns: {{ .Release.Namespace }}\n\
                 {{- if .Values.a.list }}\nlist: yes\n{{- end }}\n\
                 {{- if .Values.a.on }}\non: yes\n{{- else }}\non: no\n{{- end }}\n\
                 res:{{ toYaml .Values.a.res | nindent 2 }}\n{{/* gone */}}d: {{ .Values.missing | default \"z\" }}\n";
        let out = c.render("t.yaml", t).expect("render");
        assert_eq!(
            out,
            "k: x\nn: 2\nq: \"x\"\nns: istio-system\non: yes\nres:\n  cpu: '1'\nd: z\n"
        );
    }

    #[test]
    fn refuses_what_it_cannot_render_exactly() {
        let c = ctx(json!({}));
        let e = c
            .render("t.yaml", "a: 1\nb: {{ .Values.nope }}\n")
            .expect_err("missing");
        assert_eq!(e.line, 2);
        assert!(e.message.contains("no value"), "{e}");
        let e = c
            .render("t.yaml", "{{ include \"x\" . }}")
            .expect_err("unsupported");
        assert!(e.message.contains("unsupported"), "{e}");
        assert!(c.render("t.yaml", "{{ if .Values.x }}a").is_err());
        assert!(c.render("t.yaml", "{{ end }}").is_err());
    }

    #[test]
    fn set_reads_like_helm() {
        let mut v = json!({"a": {"b": 1, "keep": true}});
        set_value(&mut v, "a.b=5").expect("set");
        set_value(&mut v, "a.c=text").expect("set");
        set_value(&mut v, "d=false").expect("set");
        assert_eq!(
            v,
            json!({"a": {"b": 5, "keep": true, "c": "text"}, "d": false})
        );
        assert!(set_value(&mut v, "novalue").is_err());
    }
}
