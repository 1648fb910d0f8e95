//! A stand-in for bash in planning sandboxes.
//!
//! Unikraft sets make's `SHELL` to bash, and writes each object's `.cmd`
//! file after a `$(shell mkdir -p DIR)`: `make -n all` on helloworld+musl
//! starts bash 1,614 times, and bash starts `mkdir`. Timed here, 200
//! `bash -c 'mkdir -p D'` take 3.6 ms each; this binary starting and
//! exiting takes 2.1 ms.
//!
//! A sandbox made with [`Sandbox::with_shell_stand_in`](crate::exec::sandbox::Sandbox::with_shell_stand_in)
//! binds this binary over bash, and the real bash at [`REAL_BASH_INSIDE`].
//! Started under the name `bash`, it does what bash would have done:
//!
//! | arguments | what happens |
//! |---|---|
//! | `-c 'mkdir -p DIR…'`, literal words | the directories are made here; if one cannot be, `mkdir` runs as below, makes what is left and says why |
//! | `-c 'PROGRAM WORD…'`, literal words ([`super::simple`]) | the program is exec'd with what bash gives it (`PWD`, `SHLVL`, `_`) |
//! | anything else | the real bash, with the same arguments and the same `argv[0]` (so `$BASH` is the same) |
//!
//! Whatever bash would read from the environment before running a command
//! (`BASH_ENV`, `SHELLOPTS`, `BASHOPTS`, `POSIXLY_CORRECT`, exported
//! functions, a `PWD` it would rewrite, a `SHLVL` it would warn about)
//! sends the command to bash. The plan made with the stand-in is the plan
//! made without it: `tests/sandbox.rs` runs the same make both ways and
//! compares what it printed and the tree it left.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Where the real bash is bound in a sandbox with the stand-in (outside
/// `/kraft`, like the runner).
pub const REAL_BASH_INSIDE: &str = "/.kraft-bash";

/// If this process was started as `bash` (the stand-in), does what bash
/// would and never returns; otherwise returns at once.
pub fn serve_if_started_as_bash() {
    let mut args = std::env::args_os();
    let Some(argv0) = args.next() else { return };
    if std::path::Path::new(&argv0).file_name().is_none_or(|n| n != "bash") {
        return;
    }
    let rest: Vec<OsString> = args.collect();
    if let [flag, script] = rest.as_slice() {
        if flag == "-c" {
            if let Some(script) = script.to_str() {
                try_without_bash(script);
            }
        }
    }
    let err = Command::new(REAL_BASH_INSIDE).arg0(&argv0).args(&rest).exec();
    eprintln!("kraft: bash stand-in: cannot start {REAL_BASH_INSIDE}: {err}");
    std::process::exit(126);
}

/// Runs `script` as bash would, without bash, when that is exactly the
/// same; returns when bash must run it.
fn try_without_bash(script: &str) {
    let Some(words) = super::simple::words(script) else { return };
    if !environment_is_plain() {
        return;
    }
    let Some(pwd) = bash_pwd() else { return };
    let path = std::env::var("PATH").unwrap_or_default();
    let Some(program) = super::simple::resolve(&words[0], &path) else { return };
    if words[0] == "mkdir" && make_dirs(&words[1..]) {
        std::process::exit(0);
    }
    // `exec` returns only on failure (a script without `#!`, say): bash
    // decides what that means.
    let _ = Command::new(&program).arg0(&words[0]).args(&words[1..]).envs(super::simple::bash_env(&pwd, &program)).exec();
}

/// `mkdir -p DIR…` made here. `false` when it is not exactly that, or a
/// directory could not be made: then `mkdir` itself runs, makes what is
/// left and reports what failed, as it would have.
fn make_dirs(args: &[String]) -> bool {
    let Some((flag, dirs)) = args.split_first() else { return false };
    if flag != "-p" || dirs.is_empty() || dirs.iter().any(|d| d.is_empty() || d.starts_with('-')) {
        return false;
    }
    // mkdir -p gives the parents it makes u+wx whatever the umask; ours
    // would not, so only a umask that grants it anyway is handled here.
    // SAFETY: umask only swaps the process's mask; the old one is restored.
    let umask = unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old
    };
    if umask & 0o300 != 0 {
        return false;
    }
    dirs.iter().all(|d| std::fs::DirBuilder::new().recursive(true).mode(0o777).create(d).is_ok() && std::path::Path::new(d).is_dir())
}

/// No variable that bash would act on at start, and every name one bash
/// would pass on as it is.
fn environment_is_plain() -> bool {
    const READ_BY_BASH: [&str; 6] = ["BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "POSIXLY_CORRECT", "BASH_XTRACEFD"];
    std::env::vars_os().all(|(name, _)| {
        let name = name.as_bytes();
        let identifier = !name.is_empty()
            && !name[0].is_ascii_digit()
            && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
        identifier && !READ_BY_BASH.iter().any(|r| r.as_bytes() == name) && !name.starts_with(b"BASH_FUNC_")
    }) && std::env::var("SHLVL").map_or(true, |l| l.trim().parse::<i64>().is_ok_and(|l| l < 999))
}

/// The `PWD` bash would set: the inherited one when it names the working
/// directory (bash would tidy a `.`, `..` or doubled slash in it: then
/// `None`, and bash runs the command), else the working directory.
fn bash_pwd() -> Option<String> {
    let dot = std::fs::metadata(".").ok()?;
    if let Ok(pwd) = std::env::var("PWD") {
        if pwd.starts_with('/') {
            if let Ok(there) = std::fs::metadata(&pwd) {
                if (there.dev(), there.ino()) == (dot.dev(), dot.ino()) {
                    let tidy = pwd == "/"
                        || (!pwd.ends_with('/') && pwd[1..].split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
                    return tidy.then_some(pwd);
                }
            }
        }
    }
    std::env::current_dir().ok()?.into_os_string().into_string().ok()
}
