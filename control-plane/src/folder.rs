//! The folder source (local mode): every `*.yaml`/`*.yml` file of a folder,
//! read into one store. A file that fails to parse keeps the objects it
//! held at its last good read, so a bad edit never replaces a good config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::manifest::{self, ManifestError};
use crate::store::{Object, Store};

/// The folder's files and what each held when last read well.
#[derive(Debug, Default)]
pub struct Folder {
    root: PathBuf,
    default_namespace: String,
    files: BTreeMap<PathBuf, FileState>,
}

#[derive(Debug, Default)]
struct FileState {
    /// The text last read (to skip files that did not change).
    text: String,
    /// The objects of the last good read.
    objects: Vec<Object>,
    /// The error of the last read, when it failed.
    error: Option<ManifestError>,
    /// The last read failed at the file system (not the parser): read and
    /// parse again next time even if the text looks the same.
    unreadable: bool,
}

/// What a rescan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Whether any file's objects changed (added, edited, removed).
    pub changed: bool,
    /// Files that failed to parse now; their last good objects stay.
    pub errors: Vec<ManifestError>,
}

impl Folder {
    pub fn new(root: impl Into<PathBuf>, default_namespace: impl Into<String>) -> Self {
        Self {
            root: root.into(),
            default_namespace: default_namespace.into(),
            files: BTreeMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads the folder again (recursively, in name order). Fails only when
    /// the folder itself cannot be read.
    pub fn rescan(&mut self) -> std::io::Result<Scan> {
        let mut paths = Vec::new();
        collect(&self.root, &mut paths)?;
        let mut scan = Scan::default();
        let before = self.files.len();
        self.files.retain(|p, _| paths.contains(p));
        scan.changed |= self.files.len() != before;
        for path in paths {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                // Removed between listing and reading: the next scan drops it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    let err = ManifestError {
                        file: path.display().to_string(),
                        line: 0,
                        message: format!("cannot read: {e}"),
                    };
                    let state = self.files.entry(path).or_default();
                    state.error = Some(err.clone());
                    state.unreadable = true;
                    scan.errors.push(err);
                    continue;
                }
            };
            let known = self.files.contains_key(&path);
            let state = self.files.entry(path.clone()).or_default();
            if known && state.text == text && !state.unreadable {
                continue;
            }
            state.unreadable = false;
            state.text = text;
            match manifest::parse(
                &path.display().to_string(),
                &state.text,
                &self.default_namespace,
            ) {
                Ok(parsed) => {
                    state.objects = parsed.objects;
                    state.error = None;
                    scan.changed = true;
                }
                Err(e) => {
                    state.error = Some(e.clone());
                    scan.errors.push(e);
                }
            }
        }
        Ok(scan)
    }

    /// The store the folder describes: every file's last good objects, in
    /// file-name order (a later file's object replaces an earlier one of
    /// the same kind and key).
    pub fn store(&self) -> Store {
        Store::from_objects(self.files.values().flat_map(|f| f.objects.iter().cloned()))
    }

    /// Files whose last read failed.
    pub fn errors(&self) -> Vec<ManifestError> {
        self.files
            .values()
            .filter_map(|f| f.error.clone())
            .collect()
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue; // editors' swap and temporary files
        }
        if e.file_type()?.is_dir() {
            collect(&path, out)?;
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the system temp dir, removed on drop.
    struct TempDir(tempfile::TempDir);

    impl TempDir {
        fn new(name: &str) -> Self {
            Self(
                tempfile::Builder::new()
                    .prefix(&format!("outrigger-folder-{name}-"))
                    .tempdir()
                    .unwrap(),
            )
        }
        fn path(&self) -> &Path {
            self.0.path()
        }
        fn write(&self, file: &str, text: &str) {
            let p = self.path().join(file);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: { name: web }\nspec: { clusterIP: 10.0.0.1, ports: [{ port: 80 }] }\n";

    #[test]
    fn a_bad_edit_keeps_the_last_good_objects_of_that_file() {
        let dir = TempDir::new("bad-edit");
        dir.write("svc.yaml", SVC);
        dir.write("sub/more.yml", &SVC.replace("web", "api"));
        dir.write("notes.txt", "not a manifest");
        dir.write(".svc.yaml.swp", "garbage");
        let mut f = Folder::new(dir.path(), "default");
        let scan = f.rescan().unwrap();
        assert!(scan.changed && scan.errors.is_empty(), "{:?}", scan.errors);
        assert_eq!(f.store().services.len(), 2);

        dir.write(
            "svc.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: { name: web\n",
        );
        let scan = f.rescan().unwrap();
        assert!(!scan.changed);
        assert_eq!(scan.errors.len(), 1);
        assert!(
            scan.errors[0].file.ends_with("svc.yaml"),
            "{}",
            scan.errors[0]
        );
        assert_eq!(
            f.store().services.len(),
            2,
            "the last good web Service stays"
        );
        assert_eq!(f.errors().len(), 1);

        // Unchanged bad file: not reported again, still listed as failing.
        let scan = f.rescan().unwrap();
        assert!(scan.errors.is_empty() && !scan.changed);
        assert_eq!(f.errors().len(), 1);

        dir.write("svc.yaml", &SVC.replace("web", "www"));
        let scan = f.rescan().unwrap();
        assert!(scan.changed && scan.errors.is_empty());
        let names: Vec<_> = f.store().services.keys().map(|k| k.name.clone()).collect();
        assert_eq!(names, ["api", "www"]);
        assert!(f.errors().is_empty());
    }

    #[test]
    fn a_removed_file_takes_its_objects_with_it() {
        let dir = TempDir::new("removed");
        dir.write("a.yaml", SVC);
        let mut f = Folder::new(dir.path(), "default");
        f.rescan().unwrap();
        assert_eq!(f.store().len(), 1);
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert!(f.rescan().unwrap().changed);
        assert!(f.store().is_empty());
        assert!(!f.rescan().unwrap().changed, "nothing new");
    }

    #[test]
    fn a_missing_folder_is_an_error() {
        let mut f = Folder::new("/nonexistent/outrigger", "default");
        assert!(f.rescan().is_err());
    }
}
