//! A directory of ordinary Kubernetes YAML, watched for changes. Files are
//! re-read when their size or mtime changes (polling: works on every
//! filesystem, in containers and on bind mounts). A file that stops parsing
//! is reported and its last good contents stay in force.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use ambit_api::k8s::{LoadError, Resources, Source};
use tokio::sync::mpsc;
use tracing::warn;

use super::{ConfigSource, SourceEvent};

/// Watches `dir` (its `*.yaml` / `*.yml` files, sorted by name).
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
    interval: Duration,
}

impl DirSource {
    /// Polls every `interval` (100 ms keeps edits well under a second).
    pub fn new(dir: impl Into<PathBuf>, interval: Duration) -> Self {
        DirSource {
            dir: dir.into(),
            interval,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: Option<SystemTime>,
}

struct FileState {
    stamp: Stamp,
    /// The last contents that parsed.
    good: Option<Resources>,
    error: Option<LoadError>,
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| LoadError {
            source_ref: Source {
                file: dir.display().to_string(),
                doc: 0,
            },
            object: "directory".into(),
            message: e.to_string(),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

fn read_file(path: &Path) -> Result<Resources, LoadError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| LoadError {
        source_ref: Source {
            file: file.clone(),
            doc: 0,
        },
        object: "file".into(),
        message: e.to_string(),
    })?;
    let mut r = Resources::default();
    r.add_yaml(&text, &file)?;
    Ok(r)
}

/// Merges per-file resources in file order.
fn merge(files: &BTreeMap<PathBuf, FileState>) -> Resources {
    let mut all = Resources::default();
    for st in files.values() {
        if let Some(r) = &st.good {
            all.extend(r.clone());
        }
    }
    all
}

/// One scan: re-reads changed files; returns whether anything changed.
fn scan(dir: &Path, files: &mut BTreeMap<PathBuf, FileState>) -> Result<bool, LoadError> {
    let present = yaml_files(dir)?;
    let mut changed = false;
    files.retain(|p, _| {
        let keep = present.contains(p);
        changed |= !keep;
        keep
    });
    for path in present {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let stamp = Stamp {
            len: meta.len(),
            mtime: meta.modified().ok(),
        };
        if files.get(&path).is_some_and(|s| s.stamp == stamp) {
            continue;
        }
        changed = true;
        let parsed = read_file(&path);
        let st = files.entry(path.clone()).or_insert(FileState {
            stamp: stamp.clone(),
            good: None,
            error: None,
        });
        st.stamp = stamp;
        match parsed {
            Ok(r) => {
                st.good = Some(r);
                st.error = None;
            }
            Err(e) => {
                warn!(error = %e, "file not applied; its last good contents stay in force");
                st.error = Some(e);
            }
        }
    }
    Ok(changed)
}

/// The directory's resources as the watch would first see them: every file
/// that parses (one that does not is logged and left out, as the watch
/// leaves it out). For what must be known before the watch starts (the
/// trust domain in the mesh config).
pub fn read_once(dir: &Path) -> Result<Resources, LoadError> {
    let mut files = BTreeMap::new();
    scan(dir, &mut files)?;
    Ok(merge(&files))
}

impl ConfigSource for DirSource {
    fn run(
        self: Box<Self>,
        tx: mpsc::Sender<SourceEvent>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mut files = BTreeMap::new();
            let mut first = true;
            loop {
                match scan(&self.dir, &mut files) {
                    Ok(changed) if changed || first => {
                        first = false;
                        let errors = files.values().filter_map(|s| s.error.clone()).collect();
                        let event = SourceEvent::Snapshot {
                            resources: merge(&files),
                            errors,
                        };
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "cannot read the config directory"),
                }
                tokio::time::sleep(self.interval).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n";

    #[tokio::test]
    async fn edits_are_seen_and_bad_files_keep_last_good() {
        let dir = std::env::temp_dir().join(format!("ambit-dirsource-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), NS).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(Box::new(DirSource::new(&dir, Duration::from_millis(20))).run(tx));
        let SourceEvent::Snapshot { resources, errors } = rx.recv().await.unwrap();
        assert_eq!(resources.namespaces.len(), 1);
        assert!(errors.is_empty());

        std::fs::write(
            dir.join("a.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: [oops\n",
        )
        .unwrap();
        let SourceEvent::Snapshot { resources, errors } = rx.recv().await.unwrap();
        assert_eq!(resources.namespaces.len(), 1, "last good contents kept");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("a.yaml"), "{}", errors[0]);

        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        let SourceEvent::Snapshot { resources, .. } = rx.recv().await.unwrap();
        assert!(resources.namespaces.is_empty());
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
