//! Every target of a Kraftfile, cross builds, and the host-program check
//! (`doctor`, and `build` before planning). Real make, gcc, the
//! aarch64-linux-gnu cross compiler and bubblewrap; the real binary.

mod support;

use camino::{Utf8Path, Utf8PathBuf};
use serde_json::Value;
use support::*;

/// The fixture app with a native and a cross target, in its own workspace.
struct App {
    _tmp: tempfile::TempDir,
    root: Utf8PathBuf,
    ws: Utf8PathBuf,
}

impl App {
    fn two_targets() -> App {
        let tmp = tempfile::tempdir().unwrap();
        let root = utf8(tmp.path());
        let ws = root.join("ws");
        make_workspace(&ws);
        write_greet_recipe(&ws);
        for dir in ["core", "lib-greet", "app-hello"] {
            copy_dir(&fixtures().join(dir), &ws.join("apps").join(dir));
        }
        let _ = std::fs::remove_file(ws.join("apps/app-hello/kraft.lock"));
        let kraftfile = ws.join("apps/app-hello/Kraftfile");
        let text = std::fs::read_to_string(&kraftfile).unwrap();
        std::fs::write(&kraftfile, text.replace("  - linuxu/x86_64\n", "  - linuxu/x86_64\n  - linuxu/arm64\n")).unwrap();
        App { _tmp: tmp, root, ws }
    }

    fn xtask(&self, envs: &[(&str, &str)], args: &[&str]) -> std::process::Output {
        let archives = fixtures().join("archives");
        let mut all = vec![("KRAFT_ARCHIVE_DIR", archives.as_str())];
        all.extend_from_slice(envs);
        xtask(&self.ws, &self.root.join("store"), &all, args)
    }

    fn image(&self, target: &str) -> Utf8PathBuf {
        self.ws.join(format!("target/kraft/app-hello/{target}/hello_{target}"))
    }
}

/// ELF `e_machine` of a file (62: x86-64, 183: AArch64).
fn elf_machine(path: &Utf8Path) -> u16 {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    assert_eq!(&bytes[..4], b"\x7fELF", "{path} is not an ELF file");
    u16::from_le_bytes([bytes[18], bytes[19]])
}

fn finished_targets(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["reason"] == "target-finished")
        .map(|e| e["target"].as_str().unwrap().to_string())
        .collect()
}

/// A directory holding links to the programs a fixture build runs on the
/// host, except `leave_out`: a `PATH` where exactly that one is missing.
fn narrowed_path(root: &Utf8Path, leave_out: &str) -> String {
    let dir = root.join(format!("path-without-{leave_out}"));
    std::fs::create_dir_all(&dir).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let search = std::env::var_os("PATH").unwrap();
    let mut programs: Vec<String> = ["make", "gcc", "aarch64-linux-gnu-gcc", "flex", "bison", "bwrap", "git", "python3", "rustc"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    programs.retain(|p| p != leave_out);
    for program in &programs {
        let found = kraft::doctor::find_in_path(program, &search).unwrap_or_else(|| panic!("{program} is not installed (run .ci/setup)"));
        std::os::unix::fs::symlink(found, dir.join(program)).unwrap();
    }
    let cargo = if cargo.contains('/') { Utf8PathBuf::from(cargo) } else { kraft::doctor::find_in_path("cargo", &search).unwrap() };
    std::os::unix::fs::symlink(&cargo, dir.join("cargo")).unwrap();
    dir.to_string()
}

#[test]
fn build_builds_every_target_and_t_picks_one() {
    let app = App::two_targets();
    let all = app.xtask(&[], &["--message-format", "json", "build", "app-hello"]);
    assert_ok(&all);
    assert_eq!(finished_targets(&all), vec!["linuxu/x86_64", "linuxu/arm64"]);
    // The arm64 target went through CROSS_COMPILE=aarch64-linux-gnu-.
    if std::env::consts::ARCH == "x86_64" {
        assert_eq!(elf_machine(&app.image("linuxu-x86_64")), 62);
        assert_eq!(elf_machine(&app.image("linuxu-arm64")), 183);
        let cmd = std::fs::read_to_string(app.ws.join("target/kraft/app-hello/linuxu-arm64/build/hello_linuxu-arm64.dbg.cmd")).unwrap();
        assert!(cmd.contains("aarch64-linux-gnu-\"gcc"), "{cmd}");
    }

    let one = app.xtask(&[], &["--message-format", "json", "build", "-t", "linuxu/arm64", "app-hello"]);
    assert_ok(&one);
    assert_eq!(finished_targets(&one), vec!["linuxu/arm64"]);
    let none = app.xtask(&[], &["build", "-t", "qemu/riscv64", "app-hello"]);
    assert_fails_with(&none, "no target `qemu/riscv64`");
    assert_fails_with(&none, "linuxu/x86_64, linuxu/arm64");
}

#[test]
fn doctor_lists_everything_present_on_a_set_up_machine() {
    let app = App::two_targets();
    let out = app.xtask(&[], &["doctor"]);
    assert_ok(&out);
    let text = stderr(&out);
    for program in ["make", "gcc", "aarch64-linux-gnu-gcc", "flex", "bison", "bwrap", "git", "python3", "qemu-system-x86_64", "qemu-system-aarch64"] {
        assert!(text.lines().any(|l| l.trim_start().starts_with("ok") && l.contains(program)), "{program} not ok:\n{text}");
    }
    assert!(!text.contains("MISSING"), "{text}");
    let for_app = app.xtask(&[], &["doctor", "app-hello", "-t", "linuxu/arm64"]);
    assert_ok(&for_app);
    assert!(stderr(&for_app).contains("aarch64-linux-gnu-gcc"));
}

#[test]
fn a_missing_flex_stops_the_build_before_planning() {
    let app = App::two_targets();
    let path = narrowed_path(&app.root, "flex");
    let out = app.xtask(&[("PATH", &path)], &["build", "app-hello"]);
    assert_fails_with(&out, "needs host programs that are not installed: `flex`");
    for line in ["sudo apt-get install -y flex", "sudo dnf install -y flex", "sudo pacman -S --needed flex", "sudo apk add flex", "sudo zypper install -y flex", "nix develop"] {
        assert_fails_with(&out, line);
    }
    assert!(!stderr(&out).contains("Planned"), "{}", stderr(&out));
    assert!(!app.ws.join("target/kraft/app-hello/linuxu-x86_64/build").exists());
    // `doctor` says the same and fails.
    let doctor = app.xtask(&[("PATH", &path)], &["doctor", "app-hello"]);
    assert_fails_with(&doctor, "MISSING  flex");
}

#[test]
fn a_missing_cross_compiler_is_named_with_its_package() {
    let app = App::two_targets();
    let path = narrowed_path(&app.root, "aarch64-linux-gnu-gcc");
    // The native target does not need it.
    assert_ok(&app.xtask(&[("PATH", &path)], &["build", "-t", "linuxu/x86_64", "app-hello"]));
    if std::env::consts::ARCH != "x86_64" {
        return;
    }
    let out = app.xtask(&[("PATH", &path)], &["build", "app-hello"]);
    assert_fails_with(&out, "`aarch64-linux-gnu-gcc` (cross-compiles arm64 targets");
    assert_fails_with(&out, "sudo apt-get install -y gcc-aarch64-linux-gnu");
    assert!(!stderr(&out).contains("exit status 127"), "{}", stderr(&out));
    assert!(!app.ws.join("target/kraft/app-hello/linuxu-arm64").exists());
}
