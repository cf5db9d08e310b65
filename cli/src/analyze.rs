//! `ambit analyze -f DIR`: what `istioctl analyze` does for a directory of
//! YAML, with Ambit's validation: every finding names the file (and
//! document), the object (`Kind namespace/name`) and the field. Each file is
//! read on its own, so one that does not parse does not hide the others.
//! Exit status 79 (as istioctl) when there is an error, 0 otherwise.

use std::path::Path;

use ambit_api::k8s::Resources;
use ambit_api::translate::{Finding, Severity};

/// Exit status when errors were found (istioctl analyze's).
pub const EXIT_ERRORS: i32 = 79;

/// The findings for `dir`, load errors first.
pub fn analyze(dir: &Path) -> anyhow::Result<Vec<Finding>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut all = Resources::default();
    let mut findings = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let mut one = Resources::default();
        match one.add_yaml(&text, &f.display().to_string()) {
            Ok(()) => all.extend(one),
            Err(e) => findings.push(load_finding(&e)),
        }
    }
    findings.extend(ambit_api::validate::validate(&all));
    Ok(findings)
}

/// The findings for a cluster's objects (`errors`: those that did not
/// load), as the controller would report them.
pub fn analyze_live(all: &Resources, errors: &[ambit_api::k8s::LoadError]) -> Vec<Finding> {
    let mut findings: Vec<Finding> = errors.iter().map(load_finding).collect();
    findings.extend(ambit_api::validate::validate(all));
    findings
}

/// An object that did not load, as a schema error finding (`IST0106`).
fn load_finding(e: &ambit_api::k8s::LoadError) -> Finding {
    Finding {
        severity: Severity::Error,
        code: ambit_api::translate::codes::SCHEMA_VALIDATION_ERROR,
        source: e.source_ref.clone(),
        object: e.object.clone(),
        field: String::new(),
        message: e.message.clone(),
    }
}

/// How findings are printed (`istioctl analyze -o`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line per finding.
    Log,
    /// A JSON list of messages.
    Json,
    /// A YAML list of messages.
    Yaml,
}

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "Error",
        Severity::Warning => "Warning",
        Severity::Info => "Info",
    }
}

/// One line per finding, istioctl-like: `Error [IST0106] (Kind ns/name
/// file#doc) field: message`.
pub fn render(f: &Finding) -> String {
    let field = if f.field.is_empty() {
        String::new()
    } else {
        format!(" {}", f.field)
    };
    let code = if f.code.is_empty() {
        String::new()
    } else {
        format!(" [{}]", f.code)
    };
    format!(
        "{}{code} ({} {}){field}: {}",
        level(f.severity),
        f.object,
        f.source,
        f.message
    )
}

/// One finding as `-o json|yaml` prints it: istioctl's message fields
/// (`code`, `level`, `message`, `origin`, `documentationUrl`) plus where
/// exactly (`file`, `document`, `field`).
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// `IST0xxx`, absent for what only Ambit reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// `Error`, `Warning`, `Info`.
    pub level: &'static str,
    /// What is wrong.
    pub message: String,
    /// `Kind namespace/name`.
    pub origin: String,
    /// The field path.
    pub field: String,
    /// The file it came from.
    pub file: String,
    /// The YAML document in that file (1-based; 0: not from a file).
    pub document: usize,
    /// Istio's page for the code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub documentation_url: Option<String>,
}

impl From<&Finding> for Message {
    fn from(f: &Finding) -> Self {
        let code = (!f.code.is_empty()).then(|| f.code.to_string());
        Message {
            documentation_url: code.as_ref().map(|c| {
                format!(
                    "https://istio.io/latest/docs/reference/config/analysis/{}/",
                    c.to_ascii_lowercase()
                )
            }),
            code,
            level: level(f.severity),
            message: f.message.clone(),
            origin: f.object.clone(),
            field: f.field.clone(),
            file: f.source.file.clone(),
            document: f.source.doc,
        }
    }
}

/// The findings in `output` form.
pub fn format(findings: &[Finding], output: Output, what: &str) -> anyhow::Result<String> {
    let messages: Vec<Message> = findings.iter().map(Message::from).collect();
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&messages)? + "\n",
        Output::Yaml => serde_yaml::to_string(&messages)?,
        Output::Log if findings.is_empty() => {
            format!("\u{2714} No validation issues found when analyzing {what}.\n")
        }
        Output::Log => findings.iter().map(|f| render(f) + "\n").collect(),
    })
}

/// Runs the command; returns the exit status.
pub fn run(dir: &Path, output: Output) -> anyhow::Result<i32> {
    let findings = analyze(dir)?;
    report(&findings, output, &dir.display().to_string())
}

/// Prints `findings` and returns the exit status (79 with errors, as
/// `istioctl analyze`).
pub fn report(findings: &[Finding], output: Output, what: &str) -> anyhow::Result<i32> {
    print!("{}", format(findings, output, what)?);
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    Ok(if errors > 0 { EXIT_ERRORS } else { 0 })
}
