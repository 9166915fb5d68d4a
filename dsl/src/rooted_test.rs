//! The rooted loader: an included fragment is read only if it is a regular file of bounded size
//! inside the root, after `..` and symbolic links are resolved, and a refusal reads the same
//! whether or not the path outside exists.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lower::NOT_IN_ROOT;
use crate::{Code, Loader, RootedLoader, compile_yaml};

const FRAGMENT: &str = "fragment: follow\nexits: [done]\nstates:\n  - id: call\n    phase: follow_up\n    transitions: [{ after: 7d, to: exit:done }]\n";

fn pathway(fragment: &str) -> String {
    format!(
        "pathway: t\nversion: 1\ntitle: t\nowner_role: case_manager\nroles: [case_manager]\nentry_points: [{{ id: e, state: a }}]\ninclude:\n  - fragment: {fragment}\n    prefix: fu_\n    exits: {{ done: b }}\nstates:\n  - id: a\n    phase: follow_up\n    transitions: [{{ after: 1d, to: fu_call }}]\n  - {{ id: b, phase: closed, terminal: true }}\n"
    )
}

/// A temporary folder holding `root/` (with a good fragment) and, beside it, `secret.yaml`.
struct Tree {
    dir: PathBuf,
}

impl Tree {
    fn new(name: &str) -> Tree {
        let dir =
            std::env::temp_dir().join(format!("carepath-rooted-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root/fragments")).unwrap();
        std::fs::write(dir.join("root/fragments/follow.yaml"), FRAGMENT).unwrap();
        std::fs::write(
            dir.join("secret.yaml"),
            "password_of_the_database: hunter2\n",
        )
        .unwrap();
        Tree { dir }
    }
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    fn loader(&self) -> RootedLoader {
        RootedLoader::new(self.root())
    }
    /// Loads `rel` as the compiler does: joined onto the pathway's folder.
    fn load(&self, rel: &str) -> Result<Vec<u8>, String> {
        self.loader().load(&self.root().join(rel))
    }
    /// Compiles a pathway in the root including `rel`; returns the fragment diagnostics.
    fn include(&self, rel: &str) -> Vec<crate::Diagnostic> {
        let src = pathway(rel);
        let c = compile_yaml("up.yaml", src.as_bytes(), &self.root(), &self.loader());
        let fragment = c.diagnostics.iter().filter(|d| d.code == Code::Fragment);
        fragment.cloned().collect()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_fragment_inside_the_root_is_read_and_compiles() {
    let t = Tree::new("inside");
    assert_eq!(
        t.load("fragments/follow.yaml").unwrap(),
        FRAGMENT.as_bytes()
    );
    assert_eq!(
        t.load("./fragments/follow.yaml").unwrap(),
        FRAGMENT.as_bytes()
    );
    let src = pathway("fragments/follow.yaml");
    let c = compile_yaml("up.yaml", src.as_bytes(), &t.root(), &t.loader());
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
}

#[test]
fn absolute_paths_are_refused_inside_or_outside() {
    let t = Tree::new("absolute");
    assert_eq!(t.load("/etc/passwd").unwrap_err(), NOT_IN_ROOT);
    let secret = t.dir.join("secret.yaml");
    assert_eq!(t.load(secret.to_str().unwrap()).unwrap_err(), NOT_IN_ROOT);
    let diags = t.include("/etc/passwd");
    assert_eq!(diags.len(), 1, "{diags:?}");
    let d = &diags[0];
    assert_eq!(d.code, Code::Fragment);
    assert_eq!(d.file, "up.yaml");
    assert_eq!((d.pos.line, d.pos.col), (8, 15));
    assert!(d.message.contains(NOT_IN_ROOT), "{}", d.message);
    assert!(!d.hint.is_empty());
    assert!(!d.message.contains("root:x"), "{}", d.message);
}

#[test]
fn climbing_out_with_dot_dot_is_refused_like_a_missing_file() {
    let t = Tree::new("dotdot");
    for rel in [
        "../secret.yaml",
        "../no_such_file.yaml",
        "fragments/../../secret.yaml",
        "../../../../../../../../etc/passwd",
        "fragments/nope.yaml",
    ] {
        let d = t.include(rel);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].code, Code::Fragment);
        assert_eq!(
            d[0].message,
            format!("cannot read fragment `{rel}`: {NOT_IN_ROOT}")
        );
    }
    // `..` that stays inside is refused too: the path must not climb at all.
    assert_eq!(
        t.load("fragments/../fragments/follow.yaml").unwrap_err(),
        NOT_IN_ROOT
    );
}

#[cfg(unix)]
#[test]
fn symbolic_links_out_of_the_root_are_refused_and_links_inside_followed() {
    let t = Tree::new("symlink");
    std::os::unix::fs::symlink(t.dir.join("secret.yaml"), t.root().join("out.yaml")).unwrap();
    std::os::unix::fs::symlink(&t.dir, t.root().join("up")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", t.root().join("zero.yaml")).unwrap();
    std::os::unix::fs::symlink(
        t.root().join("fragments/follow.yaml"),
        t.root().join("alias.yaml"),
    )
    .unwrap();
    assert_eq!(t.load("out.yaml").unwrap_err(), NOT_IN_ROOT);
    assert_eq!(t.load("up/secret.yaml").unwrap_err(), NOT_IN_ROOT);
    assert_eq!(t.load("zero.yaml").unwrap_err(), NOT_IN_ROOT);
    assert_eq!(t.load("alias.yaml").unwrap(), FRAGMENT.as_bytes());
}

/// Runs `f` on its own thread and fails the test if it takes more than two seconds (a blocking
/// open or an endless read would hang the test otherwise).
fn promptly<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(2))
        .expect("the loader blocked or read without end")
}

#[test]
fn devices_and_folders_inside_the_root_are_refused_without_reading() {
    if Path::new("/dev/zero").exists() {
        let dev = RootedLoader::new("/dev");
        let err = promptly(move || dev.load(Path::new("/dev/zero"))).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        let dev = RootedLoader::new("/dev");
        let err = promptly(move || dev.load(Path::new("/dev/../dev/zero"))).unwrap_err();
        assert_eq!(err, NOT_IN_ROOT);
    }
    let t = Tree::new("folder");
    let err = t.load("fragments").unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
}

#[cfg(unix)]
#[test]
fn a_fifo_inside_the_root_is_refused_without_blocking() {
    let t = Tree::new("fifo");
    let fifo = t.root().join("pipe.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        eprintln!("mkfifo is not available; the FIFO case is not checked");
        return;
    }
    let loader = t.loader();
    let err = promptly(move || loader.load(&fifo)).unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn an_oversized_fragment_is_refused() {
    let t = Tree::new("size");
    std::fs::write(t.root().join("big.yaml"), vec![b'#'; 65]).unwrap();
    std::fs::write(t.root().join("small.yaml"), vec![b'#'; 64]).unwrap();
    let small = t.loader().with_max_bytes(64);
    assert_eq!(small.load(&t.root().join("small.yaml")).unwrap().len(), 64);
    let err = small.load(&t.root().join("big.yaml")).unwrap_err();
    assert!(err.contains("65 bytes"), "{err}");
    // The default cap is the pathway file cap.
    let huge = t.root().join("huge.yaml");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(crate::lower::max_fragment_bytes() + 1).unwrap();
    let err = t.load("huge.yaml").unwrap_err();
    assert!(err.contains("larger than a pathway file may be"), "{err}");
}

#[test]
fn a_relative_root_and_the_working_folder_as_root_work() {
    let here = RootedLoader::new("");
    assert!(here.load(Path::new("Cargo.toml")).is_ok());
    assert_eq!(
        here.load(Path::new("../Cargo.toml")).unwrap_err(),
        NOT_IN_ROOT
    );
    let rel = RootedLoader::new("tests/fixtures/good");
    assert!(
        rel.load(Path::new(
            "tests/fixtures/good/fragments/standard_follow_up.yaml"
        ))
        .is_ok()
    );
    let missing = RootedLoader::new("no/such/root");
    assert_eq!(
        missing.load(Path::new("no/such/root/x.yaml")).unwrap_err(),
        NOT_IN_ROOT
    );
}

#[test]
fn absolute_and_climbing_fragment_paths_are_refused_whatever_the_loader() {
    for rel in [
        "/etc/passwd",
        "../../../../etc/passwd",
        "fragments/../x.yaml",
    ] {
        let src = pathway(rel);
        let c = compile_yaml("up.yaml", src.as_bytes(), Path::new("."), &crate::FsLoader);
        let d: Vec<_> = c
            .diagnostics
            .iter()
            .filter(|d| d.code == Code::Fragment)
            .collect();
        assert_eq!(d.len(), 1, "{rel}: {d:?}");
        assert_eq!(
            d[0].message,
            format!("cannot read fragment `{rel}`: {NOT_IN_ROOT}")
        );
        assert!(c.diagnostics.iter().all(|d| d.file == "up.yaml"), "{rel}");
    }
}
