//! The folder source (local mode): every `*.yaml`/`*.yml` file of a folder,
//! read into one store. Every document stands alone, as `kubectl apply -f`
//! treats them: a file's good documents apply, and a bad one keeps the last
//! good version of the object it names (by kind, namespace and name), so a
//! bad edit never replaces a good config. While a file has a bad document,
//! the objects no document of it names any more stay too (a half-written
//! file deletes nothing). A file that cannot be read at all (or is over the
//! size limit) keeps all of its last good objects.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::manifest::{self, ManifestError, Parsed};
use crate::store::{Object, ResourceId, Store};

/// The default limit on one manifest file (`--max-manifest-bytes`).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// The folder's files and what each holds in force.
#[derive(Debug)]
pub struct Folder {
    root: PathBuf,
    default_namespace: String,
    max_file_bytes: u64,
    files: BTreeMap<PathBuf, FileState>,
}

#[derive(Debug, Default)]
struct FileState {
    /// The text last read (to skip files that did not change).
    text: String,
    /// The objects in force from this file: each document's last good
    /// version.
    objects: Vec<Object>,
    /// Why the last read failed, for the file or for some of its
    /// documents.
    errors: Vec<ReadError>,
    /// The last read failed at the file (not the parser): read and parse
    /// again next time even if the text looks the same.
    unreadable: bool,
}

/// A file or document that could not be read, and what stays in force in
/// its place.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReadError {
    pub error: ManifestError,
    /// The objects whose last good version stays in force for it; none
    /// when no good version of it was read before.
    pub kept: Vec<ResourceId>,
    /// The object the document names, when that much could be read.
    pub id: Option<ResourceId>,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (", self.error)?;
        match &self.kept[..] {
            [] => f.write_str("not applied: no earlier good version of it is in force")?,
            [one] => write!(f, "the last good version of {one} stays in force")?,
            few if few.len() <= 3 => {
                let names: Vec<String> = few.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "the last good versions of {} stay in force",
                    names.join(", ")
                )?
            }
            many => write!(
                f,
                "the last good versions of its {} objects stay in force",
                many.len()
            )?,
        }
        f.write_str(")")
    }
}

/// What a rescan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Whether any file's objects changed (added, edited, removed).
    pub changed: bool,
    /// Errors new in this scan; what they name keeps its last good version.
    pub errors: Vec<ReadError>,
}

impl Folder {
    pub fn new(root: impl Into<PathBuf>, default_namespace: impl Into<String>) -> Self {
        Self {
            root: root.into(),
            default_namespace: default_namespace.into(),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            files: BTreeMap::new(),
        }
    }

    /// Files larger than `bytes` are refused by name; their last good
    /// objects stay in force.
    pub fn with_max_file_bytes(mut self, bytes: u64) -> Self {
        self.max_file_bytes = bytes;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads the folder again (recursively, in name order). Fails only when
    /// the folder itself cannot be read. Blocking file I/O and parsing: an
    /// async caller runs it off its runtime (see `publish::run_folder`).
    pub fn rescan(&mut self) -> std::io::Result<Scan> {
        let mut paths = Vec::new();
        collect(&self.root, &mut paths)?;
        let mut scan = Scan::default();
        let listed: BTreeSet<&PathBuf> = paths.iter().collect();
        let before = self.files.len();
        self.files.retain(|p, _| listed.contains(p));
        scan.changed |= self.files.len() != before;
        for path in paths {
            let name = path.display().to_string();
            let read = read_limited(&path, self.max_file_bytes);
            let state = match read {
                // Removed between listing and reading: the next scan drops it.
                Err(ref e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                _ => self.files.entry(path).or_default(),
            };
            let text = match read {
                Ok(Ok(text)) => text,
                Ok(Err(size)) => {
                    let message = format!(
                        "{size} bytes, over the limit of {} bytes for one manifest file \
                         (--max-manifest-bytes): not read; split it into smaller files",
                        self.max_file_bytes
                    );
                    state.fail_whole(&name, message, &mut scan);
                    continue;
                }
                Err(e) => {
                    state.fail_whole(&name, format!("cannot read: {e}"), &mut scan);
                    continue;
                }
            };
            if state.text == text && !state.unreadable {
                continue;
            }
            state.unreadable = false;
            let parsed = manifest::parse_documents(&name, &text, &self.default_namespace);
            state.text = text;
            let (objects, errors) = keep_last_good(&state.objects, parsed);
            scan.changed |= objects != state.objects;
            let known: HashSet<&ReadError> = state.errors.iter().collect();
            scan.errors
                .extend(errors.iter().filter(|e| !known.contains(e)).cloned());
            state.objects = objects;
            state.errors = errors;
        }
        Ok(scan)
    }

    /// The store the folder describes: every file's objects in force, in
    /// file-name order (a later file's object replaces an earlier one of
    /// the same kind and key).
    pub fn store(&self) -> Store {
        Store::from_objects(self.files.values().flat_map(|f| f.objects.iter().cloned()))
    }

    /// The files and documents whose last read failed.
    pub fn errors(&self) -> Vec<ReadError> {
        self.files
            .values()
            .flat_map(|f| f.errors.iter().cloned())
            .collect()
    }
}

impl FileState {
    /// The file as a whole could not be read: all its objects stay.
    fn fail_whole(&mut self, file: &str, message: String, scan: &mut Scan) {
        let err = ReadError {
            error: ManifestError {
                file: file.to_string(),
                line: 0,
                message,
            },
            kept: self.objects.iter().filter_map(Object::id).collect(),
            id: None,
        };
        if !self.errors.contains(&err) {
            scan.errors.push(err.clone());
        }
        self.errors = vec![err];
        self.unreadable = true;
    }
}

/// The file's text, or its size when it is over `limit` bytes (checked
/// before reading, and again while reading a file that grows).
fn read_limited(path: &Path, limit: u64) -> std::io::Result<Result<String, u64>> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size > limit {
        return Ok(Err(size));
    }
    let mut text = String::new();
    file.take(limit.saturating_add(1))
        .read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Ok(Err(text.len() as u64));
    }
    Ok(Ok(text))
}

/// The objects a file puts in force after a read, from the objects it had
/// in force before: every good document, and for each bad one the previous
/// version of the object it names. A file with a bad document is not a
/// reliable account of what was deleted (half written, or cut short, or
/// that document too broken to say what it names): the objects it had
/// that no document names now stay too, until the file reads well.
fn keep_last_good(previous: &[Object], parsed: Parsed) -> (Vec<Object>, Vec<ReadError>) {
    let mut objects = parsed.objects;
    let good: BTreeSet<ResourceId> = objects.iter().filter_map(Object::id).collect();
    let named: BTreeSet<&ResourceId> = good
        .iter()
        .chain(parsed.bad.iter().filter_map(|b| b.id.as_ref()))
        .collect();
    // The last of each name wins, as in the store.
    let last: BTreeMap<ResourceId, &Object> =
        previous.iter().filter_map(|o| Some((o.id()?, o))).collect();
    let mut unnamed: Vec<ResourceId> = Vec::new();
    if !parsed.bad.is_empty() {
        for o in previous {
            if let Some(id) = o.id().filter(|id| !named.contains(id)) {
                objects.push(o.clone());
                unnamed.push(id);
            }
        }
    }
    // Those go with the first document that names nothing, or else the first.
    let orphans_to = parsed.bad.iter().position(|b| b.id.is_none()).unwrap_or(0);
    let mut errors = Vec::new();
    for (i, bad) in parsed.bad.into_iter().enumerate() {
        let mut kept = match &bad.id {
            // Another document of the file reads well under this name: it applies.
            Some(id) if good.contains(id) => Vec::new(),
            Some(id) => match last.get(id) {
                Some(o) => {
                    objects.push((*o).clone());
                    vec![id.clone()]
                }
                None => Vec::new(),
            },
            None => Vec::new(),
        };
        if i == orphans_to {
            kept.append(&mut unnamed);
        }
        errors.push(ReadError {
            error: bad.error,
            kept,
            id: bad.id,
        });
    }
    (objects, errors)
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
            scan.errors[0].error.file.ends_with("svc.yaml"),
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

    const ROUTES: &str = "apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: web, namespace: shop }
spec:
  host: web
  subsets: [{ name: v1, labels: { version: v1 } }]
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: web, namespace: shop }
spec:
  hosts: [web]
  http: [{ route: [{ destination: { host: web, subset: v1 } }] }]
";

    #[test]
    fn a_good_document_applies_beside_a_bad_one_which_keeps_its_last_good_version() {
        let dir = TempDir::new("per-document");
        dir.write("routes.yaml", ROUTES);
        let mut f = Folder::new(dir.path(), "default");
        f.rescan().unwrap();
        let before = f.store();
        assert_eq!(before.virtual_services.len(), 1);

        // One edit: the rule gains a subset, the route gains a field
        // Outrigger does not support.
        let edited = ROUTES
            .replace(
                "subsets: [{ name: v1, labels: { version: v1 } }]",
                "subsets: [{ name: v1, labels: { version: v1 } }, { name: v2, labels: { version: v2 } }]",
            )
            .replace(
                "  http: [{ route",
                "  http: [{ mirror: { host: web }, route",
            );
        dir.write("routes.yaml", &edited);
        let scan = f.rescan().unwrap();
        assert!(scan.changed, "the good document applies");
        let store = f.store();
        let key = crate::store::Key::new("shop", "web");
        assert_eq!(store.destination_rules[&key].spec.subsets.len(), 2);
        assert_eq!(
            store.virtual_services[&key], before.virtual_services[&key],
            "the bad one keeps its last good version"
        );
        assert_eq!(scan.errors.len(), 1);
        let e = &scan.errors[0];
        assert!(e.error.file.ends_with("routes.yaml"));
        assert_eq!(e.error.line, 13, "the line of the field: {e}");
        assert!(e.error.message.contains("unknown field `mirror`"), "{e}");
        assert!(
            e.to_string()
                .ends_with("(the last good version of VirtualService shop/web stays in force)"),
            "{e}"
        );
        assert_eq!(f.errors(), scan.errors);

        // Fixed (to what it was): the error is gone, nothing else changed.
        dir.write(
            "routes.yaml",
            &edited.replace("mirror: { host: web }, ", ""),
        );
        let scan = f.rescan().unwrap();
        assert!(!scan.changed && scan.errors.is_empty());
        assert!(f.errors().is_empty());
        assert_eq!(f.store().virtual_services, before.virtual_services);
    }

    #[test]
    fn a_bad_document_with_no_good_version_is_not_applied_and_says_so() {
        let dir = TempDir::new("new-bad");
        dir.write(
            "routes.yaml",
            &ROUTES.replace(
                "  http: [{ route",
                "  http: [{ mirror: { host: web }, route",
            ),
        );
        let mut f = Folder::new(dir.path(), "default");
        let scan = f.rescan().unwrap();
        assert_eq!(
            f.store().destination_rules.len(),
            1,
            "the good document applies"
        );
        assert!(f.store().virtual_services.is_empty());
        assert_eq!(scan.errors.len(), 1);
        assert!(
            scan.errors[0]
                .to_string()
                .ends_with("(not applied: no earlier good version of it is in force)"),
            "never claims a last good content it does not have: {}",
            scan.errors[0]
        );
    }

    #[test]
    fn a_half_written_file_deletes_nothing() {
        let dir = TempDir::new("unnamed");
        dir.write("all.yaml", &format!("{SVC}---\n{ROUTES}"));
        let mut f = Folder::new(dir.path(), "default");
        f.rescan().unwrap();
        // Written half-way: the route's document is cut off inside its
        // metadata, so nothing says which object it is.
        let whole = format!(
            "{SVC}---\n{}",
            ROUTES.replace("subsets: [{ name: v1", "subsets: [{ name: v9")
        );
        let cut = &whole[..whole.find("kind: VirtualService\nmetadata: { na").unwrap() + 35];
        dir.write("all.yaml", cut);
        let scan = f.rescan().unwrap();
        let store = f.store();
        assert_eq!(store.services.len(), 1);
        assert_eq!(
            store
                .destination_rules
                .values()
                .next()
                .unwrap()
                .spec
                .subsets[0]
                .name,
            "v9",
            "the documents that read apply"
        );
        assert_eq!(store.virtual_services.len(), 1, "the route stays");
        assert_eq!(scan.errors.len(), 1);
        assert_eq!(
            scan.errors[0].kept,
            [ResourceId {
                kind: "VirtualService",
                key: crate::store::Key::new("shop", "web")
            }]
        );
        // Cut short inside its first mesh document, which names itself:
        // the route's document is not there at all, and still stays.
        let cut = &whole[..whole.find("  host: web").unwrap()];
        dir.write("all.yaml", cut);
        let scan = f.rescan().unwrap();
        let store = f.store();
        assert_eq!(store.virtual_services.len(), 1, "the route stays");
        assert_eq!(
            store
                .destination_rules
                .values()
                .next()
                .unwrap()
                .spec
                .subsets[0]
                .name,
            "v9",
            "the rule keeps its last good version"
        );
        let kept: Vec<String> = scan.errors[0]
            .kept
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            kept,
            ["DestinationRule shop/web", "VirtualService shop/web"],
            "{}",
            scan.errors[0]
        );
        // Once the file reads well, a document that is gone is deleted.
        dir.write("all.yaml", SVC);
        f.rescan().unwrap();
        assert!(f.store().virtual_services.is_empty());
        assert!(f.errors().is_empty());
    }

    #[test]
    fn an_oversized_file_is_refused_by_name_and_its_last_good_objects_stay() {
        let dir = TempDir::new("oversized");
        dir.write("svc.yaml", SVC);
        let mut f = Folder::new(dir.path(), "default").with_max_file_bytes(1024);
        f.rescan().unwrap();
        assert_eq!(f.store().services.len(), 1);
        let big = format!("{SVC}#{}\n", "x".repeat(1024));
        dir.write("svc.yaml", &big.replace("web", "www"));
        let scan = f.rescan().unwrap();
        assert!(!scan.changed);
        assert_eq!(scan.errors.len(), 1);
        let e = scan.errors[0].to_string();
        let path = dir.path().join("svc.yaml").display().to_string();
        assert!(
            e.starts_with(&format!("{path}:0: {} bytes, over the limit of 1024 bytes for one manifest file (--max-manifest-bytes)", big.len())),
            "{e}"
        );
        assert!(
            e.ends_with("(the last good version of Service default/web stays in force)"),
            "{e}"
        );
        let names: Vec<_> = f.store().services.keys().map(|k| k.name.clone()).collect();
        assert_eq!(names, ["web"]);
        // Reported once; cut down, it is read again.
        assert!(f.rescan().unwrap().errors.is_empty());
        assert_eq!(f.errors().len(), 1);
        dir.write("svc.yaml", &SVC.replace("web", "www"));
        let scan = f.rescan().unwrap();
        assert!(scan.changed && scan.errors.is_empty());
        let names: Vec<_> = f.store().services.keys().map(|k| k.name.clone()).collect();
        assert_eq!(names, ["www"]);
        assert_eq!(DEFAULT_MAX_FILE_BYTES, 8 << 20);
    }

    #[test]
    fn a_missing_folder_is_an_error() {
        let mut f = Folder::new("/nonexistent/outrigger", "default");
        assert!(f.rescan().is_err());
    }
}
