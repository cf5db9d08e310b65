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
            Err(e) => findings.push(Finding {
                severity: Severity::Error,
                source: e.source_ref.clone(),
                object: e.object.clone(),
                field: String::new(),
                message: e.message.clone(),
            }),
        }
    }
    findings.extend(ambit_api::validate::validate(&all));
    Ok(findings)
}

/// One line per finding, istioctl-like.
pub fn render(f: &Finding) -> String {
    let level = match f.severity {
        Severity::Error => "Error",
        Severity::Warning => "Warning",
        Severity::Info => "Info",
    };
    let field = if f.field.is_empty() {
        String::new()
    } else {
        format!(" {}", f.field)
    };
    format!("{level} ({} {}){field}: {}", f.object, f.source, f.message)
}

/// Runs the command; returns the exit status.
pub fn run(dir: &Path) -> anyhow::Result<i32> {
    let findings = analyze(dir)?;
    if findings.is_empty() {
        println!(
            "\u{2714} No validation issues found when analyzing {}.",
            dir.display()
        );
        return Ok(0);
    }
    for f in &findings {
        println!("{}", render(f));
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    Ok(if errors > 0 { EXIT_ERRORS } else { 0 })
}
