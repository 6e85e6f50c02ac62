//! A Secret mounted as the kubelet mounts it, for the tests of what reads
//! one ([`crate::certify::CaSource::Secret`]): each file is a link through
//! `..data`, itself a link to a folder of the version, swapped atomically
//! (a rename) on every update, so a reader sees the old files or the new
//! ones, never a mix. Built for tests only (`cfg(test)` or the
//! `test-support` feature).

use std::os::unix::fs::symlink;
use std::path::Path;

pub struct MountedSecret {
    dir: tempfile::TempDir,
    version: u32,
}

impl MountedSecret {
    /// A Secret holding `files` (name, content).
    pub fn new(files: &[(&str, &str)]) -> Self {
        let mut m = Self {
            dir: tempfile::Builder::new()
                .prefix("outrigger-secret")
                .tempdir()
                .expect("a temporary folder"),
            version: 0,
        };
        m.update(files);
        m
    }

    /// The Secret's new data, in force at once for every file.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let root = self.dir.path();
        let data = format!("..v{}", self.version);
        std::fs::create_dir(root.join(&data)).expect("the version's folder");
        for (name, text) in files {
            std::fs::write(root.join(&data).join(name), text).expect("a Secret file");
            let link = root.join(name);
            if link.symlink_metadata().is_err() {
                symlink(format!("..data/{name}"), &link).expect("the file's link");
            }
        }
        symlink(&data, root.join("..data_tmp")).expect("the new ..data link");
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("the swap");
    }

    /// The folder it is mounted at.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_swaps_every_file_and_drops_none_of_the_links() {
        let mut s = MountedSecret::new(&[("a", "1"), ("b", "1")]);
        let read = |s: &MountedSecret, f: &str| std::fs::read_to_string(s.path().join(f)).unwrap();
        assert_eq!((read(&s, "a"), read(&s, "b")), ("1".into(), "1".into()));
        s.update(&[("a", "2"), ("b", "2")]);
        assert_eq!((read(&s, "a"), read(&s, "b")), ("2".into(), "2".into()));
        assert!(s.path().join("a").symlink_metadata().unwrap().is_symlink());
    }
}
