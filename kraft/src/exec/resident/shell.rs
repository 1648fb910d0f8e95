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
//! | `-c 'printf FMT ARG… && … && LAST'`, literal words | `printf` (`%s`, `%-7s`, `\n`: what Unikraft's labels use) and `dirname` of a plain path are computed here; `LAST` as in the rows above, or `ln -sf T L` where nothing is at `L` is `symlink(2)` here |
//! | anything else | the real bash, with the same arguments and the same `argv[0]` (so `$BASH` is the same) |
//!
//! lib-musl's `fetch prepare` links each of its 617 headers with
//! `mkdir -p $(shell dirname $@)` and `printf … && ln -sf …`: six
//! processes a header with bash, three with the stand-in. Alternating
//! plan misses by hand, `make fetch prepare` took 6.9, 7.0 and 4.5 s
//! with this, 8.5, 7.9 and 8.0 s without.
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
/// same; returns when bash must run it. Every command is decided on
/// before any runs, so a script is either all done here or all bash's.
fn try_without_bash(script: &str) {
    let Some(list) = super::simple::and_list(script) else { return };
    if !environment_is_plain() {
        return;
    }
    let Some(pwd) = bash_pwd() else { return };
    let path = std::env::var("PATH").unwrap_or_default();
    let Some(steps) = steps(&list, &path) else { return };
    let (last, before) = steps.split_last().expect("a list has a command");
    // What the commands before the last print, then the last's own
    // output, in one write: if nothing can be written, nothing has
    // happened yet and bash runs the script (and reports the error).
    let mut out = Vec::new();
    for step in before {
        match step {
            Step::Print(bytes) => out.extend_from_slice(bytes),
            _ => unreachable!("only output comes before the last command"),
        }
    }
    if let Step::Print(bytes) = last {
        out.extend_from_slice(bytes);
    }
    if !write_all_or_none(&out) {
        return;
    }
    match last {
        Step::Print(_) => std::process::exit(0),
        Step::MakeDirs(dirs) if make_dirs(dirs) => std::process::exit(0),
        Step::Symlink { target, link } if std::os::unix::fs::symlink(target, link).is_ok() => std::process::exit(0),
        // Not done here after all: the program says why, as it would have.
        Step::MakeDirs(_) | Step::Symlink { .. } | Step::Exec(_) => {}
    }
    let words = list.last().expect("a list has a command");
    let Some(program) = super::simple::resolve(&words[0], &path) else { std::process::exit(127) };
    // `exec` returns only on failure (a script without `#!`, say): bash
    // decides what that means, unless output is already out.
    let err = Command::new(&program).arg0(&words[0]).args(&words[1..]).envs(super::simple::bash_env(&pwd, &program)).exec();
    if out.is_empty() {
        return;
    }
    eprintln!("bash: line 1: {}: {err}", words[0]);
    std::process::exit(126);
}

/// One command of a list, decided on before any runs.
#[derive(Debug, PartialEq)]
enum Step {
    /// Output only: bash's `printf`, or `dirname`, computed here.
    Print(Vec<u8>),
    /// `mkdir -p DIR…` (last command only).
    MakeDirs(Vec<String>),
    /// `ln -sf TARGET LINK` where nothing is at `LINK` (last command only).
    Symlink { target: String, link: String },
    /// Any other program, exec'd (last command only).
    Exec(std::path::PathBuf),
}

/// The steps for `list`, or `None` when bash must run it: every command
/// but the last must be output computed here (bash would run a program
/// before the last in a child, with another `SHLVL`).
fn steps(list: &[Vec<String>], path: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    for (i, words) in list.iter().enumerate() {
        let last = i + 1 == list.len();
        let (name, args) = (words[0].as_str(), &words[1..]);
        // A coreutil emulated here only when PATH finds the system's own.
        let system = |tool: &str| {
            name == tool
                && super::simple::resolve(name, path)
                    .is_some_and(|p| p == std::path::Path::new("/usr/bin").join(tool) || p == std::path::Path::new("/bin").join(tool))
        };
        let step = if name == "printf" {
            Step::Print(printf(args)?)
        } else if system("dirname") && dirname(args).is_some() {
            Step::Print(dirname(args)?)
        } else if !last {
            return None;
        } else if system("mkdir") && args.len() > 1 && args[0] == "-p" {
            Step::MakeDirs(args[1..].to_vec())
        } else if let (true, Some((target, link))) = (system("ln"), symlink_args(args)) {
            Step::Symlink { target, link }
        } else if super::simple::is_program(name) {
            Step::Exec(super::simple::resolve(name, path)?)
        } else {
            return None;
        };
        steps.push(step);
    }
    Some(steps)
}

/// Writes `bytes` to stdout. `false` when nothing could be written (the
/// caller hands the script to bash); after a partial write, fails as
/// bash's `printf` would.
fn write_all_or_none(mut bytes: &[u8]) -> bool {
    let mut first = true;
    while !bytes.is_empty() {
        // SAFETY: writes from a valid slice to fd 1.
        let n = unsafe { libc::write(1, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if first {
                return false;
            }
            eprintln!("bash: line 1: printf: write error: {err}");
            std::process::exit(1);
        }
        first = false;
        bytes = &bytes[n as usize..];
    }
    true
}

/// bash's `printf FORMAT ARG…` for what Unikraft's recipes print
/// (`'  %-7s %s\n'`): `%s` with an optional `-` and width, `%%`, and the
/// escapes `\n`, `\t`, `\\`, over ASCII, one argument per conversion.
/// `None` for anything else.
fn printf(args: &[String]) -> Option<Vec<u8>> {
    let (format, args) = args.split_first()?;
    if format.starts_with('-') || !format.is_ascii() || args.iter().any(|a| !a.is_ascii()) {
        return None;
    }
    let mut out = Vec::new();
    let mut args = args.iter();
    let mut chars = format.bytes().peekable();
    while let Some(c) = chars.next() {
        match c {
            b'\\' => out.push(match chars.next()? {
                b'n' => b'\n',
                b't' => b'\t',
                b'\\' => b'\\',
                _ => return None,
            }),
            b'%' if chars.peek() == Some(&b'%') => {
                chars.next();
                out.push(b'%');
            }
            b'%' => {
                let left = chars.peek() == Some(&b'-');
                if left {
                    chars.next();
                }
                let mut width = 0usize;
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    width = width.checked_mul(10)?.checked_add(usize::from(d - b'0'))?;
                    chars.next();
                }
                if chars.next()? != b's' || width > 4096 {
                    return None;
                }
                let arg = args.next()?.as_bytes();
                let pad = width.saturating_sub(arg.len());
                if !left {
                    out.resize(out.len() + pad, b' ');
                }
                out.extend_from_slice(arg);
                if left {
                    out.resize(out.len() + pad, b' ');
                }
            }
            c => out.push(c),
        }
    }
    // bash reuses the format for arguments left over.
    args.next().is_none().then_some(out)
}

/// `dirname PATH` for a path without doubled or trailing slashes (what
/// make's `$@` is), with its newline; `None` for anything else.
fn dirname(args: &[String]) -> Option<Vec<u8>> {
    let [path] = args else { return None };
    if path.is_empty() || path.starts_with('-') || path.ends_with('/') || path.contains("//") {
        return None;
    }
    let dir = match path.rfind('/') {
        None => ".",
        Some(0) => "/",
        Some(at) => &path[..at],
    };
    Some(format!("{dir}\n").into_bytes())
}

/// `ln -sf TARGET LINK` when nothing is at `LINK`, so that it is only
/// `symlink(2)`: `-f` has nothing to remove, and `LINK` is no directory
/// to link into.
fn symlink_args(args: &[String]) -> Option<(String, String)> {
    let [flags, target, link] = args else { return None };
    if flags != "-sf" || target.is_empty() || target.starts_with('-') || link.is_empty() || link.starts_with('-') || link.ends_with('/') {
        return None;
    }
    match std::fs::symlink_metadata(link) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some((target.clone(), link.clone())),
        _ => None,
    }
}

/// `mkdir -p DIR…` made here (`dirs`: the words after `-p`). `false` when
/// a word is not a plain directory, or a directory could not be made: then
/// `mkdir` itself runs, makes what is left and reports what failed, as it
/// would have.
fn make_dirs(dirs: &[String]) -> bool {
    if dirs.is_empty() || dirs.iter().any(|d| d.is_empty() || d.starts_with('-')) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn printf_prints_what_bash_prints_for_unikraft_labels() {
        let p = |args: &[&str]| printf(&strings(args)).map(|b| String::from_utf8(b).unwrap());
        assert_eq!(p(&[r"  %-7s %s\n", "HOSTLN", "libmusl: a.h"]).unwrap(), "  HOSTLN  libmusl: a.h\n");
        assert_eq!(p(&[r"  %-7s %s\n", "CONFIGURE", "x"]).unwrap(), "  CONFIGURE x\n");
        assert_eq!(p(&[r"[%5s|%%|\t\\]", "ab"]).unwrap(), "[   ab|%|\t\\]");
        assert_eq!(p(&["plain"]).unwrap(), "plain");
        // Left to bash: its other conversions and escapes, a reused or
        // short argument list, options, other bytes.
        for args in [&["%d", "1"][..], &["%b", "x"], &["%.3s", "abcd"], &["%*s", "3", "x"], &[r"\x41"], &[r"\c"], &["%s"], &["%s", "a", "b"], &["x", "a"], &["-v", "V", "x"], &["%s", "é"], &[]] {
            assert_eq!(p(args), None, "{args:?}");
        }
    }

    #[test]
    fn dirname_answers_as_the_system_dirname() {
        for path in ["/kraft/build/libmusl/include/sys/a.h", "/a", "a/b", "a", "./a/b", "/a/./b", "../x", "/kraft/build/a.b/c"] {
            let real = Command::new("dirname").arg(path).output().unwrap();
            assert_eq!(dirname(&strings(&[path])).unwrap(), real.stdout, "{path}");
        }
        for args in [&["/a/"][..], &["//a"], &["a//b"], &["/"], &[""], &["-z"], &["a", "b"], &[]] {
            assert_eq!(dirname(&strings(args)), None, "{args:?}");
        }
    }

    #[test]
    fn unikraft_header_recipes_are_done_without_bash() {
        let dir = tempfile::tempdir().unwrap();
        let link = format!("{}/a.h", dir.path().display());
        let path = "/usr/bin:/bin";
        let list = super::super::simple::and_list(&format!("printf '  %-7s %s\\n' 'HOSTLN'  'libmusl: a.h' &&  ln -sf /kraft/x/a.h {link}")).unwrap();
        let steps = steps(&list, path).unwrap();
        assert_eq!(steps[0], Step::Print(b"  HOSTLN  libmusl: a.h\n".to_vec()));
        assert_eq!(steps[1], Step::Symlink { target: "/kraft/x/a.h".into(), link: link.clone() });
        assert_eq!(steps_of(&format!("dirname {link}"), path).unwrap(), [Step::Print(format!("{}\n", dir.path().display()).into_bytes())]);
        assert_eq!(steps_of("mkdir -p a b", path).unwrap(), [Step::MakeDirs(strings(&["a", "b"]))]);
        // What `Step::MakeDirs` holds is what `make_dirs` makes, here.
        let deep = format!("{}/x/y", dir.path().display());
        assert!(make_dirs(&strings(&[&deep, &link.replace("a.h", "z")])));
        assert!(std::path::Path::new(&deep).is_dir() && dir.path().join("z").is_dir());
        assert!(!make_dirs(&strings(&["-m", "700"])) && !make_dirs(&[]));
        assert!(matches!(steps_of("printf x && gcc -c a.c", path).unwrap()[1], Step::Exec(_)));
        // A link that exists, a program before the last, a builtin, an
        // emulated tool found elsewhere on PATH: bash's.
        std::fs::write(&link, "").unwrap();
        assert_eq!(steps_of(&format!("ln -sf /x {link}"), path).map(|s| matches!(s[0], Step::Exec(_))), Some(true));
        for script in ["mkdir -p a && printf x", "gcc a.c && printf x", "printf x && echo y", "printf x && cd /"] {
            assert_eq!(steps_of(script, path), None, "{script}");
        }
        let elsewhere = tempfile::tempdir().unwrap();
        let fake = elsewhere.path().join("dirname");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let path = format!("{}:/usr/bin:/bin", elsewhere.path().display());
        assert!(matches!(steps_of("dirname /a/b", &path).unwrap()[0], Step::Exec(_)));
        assert!(matches!(steps_of("printf x && dirname /a/b", &path).unwrap()[1], Step::Exec(_)));
        assert_eq!(steps_of("dirname /a/b && printf x", &path), None);
    }

    fn steps_of(script: &str, path: &str) -> Option<Vec<Step>> {
        steps(&super::super::simple::and_list(script)?, path)
    }
}
