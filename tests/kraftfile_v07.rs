//! Kraftfile v0.7: every form its reference documents loads with the same
//! result as its v0.6 twin (the reference is kraftfile/schema.md of
//! unikraft-cloud/x; the forms below are written from it, not copied).

use camino::{Utf8Path, Utf8PathBuf};
use kraft::source::kraftfile;
use serde_json::Value;

/// The Kraftfile's data without what may differ between twins: the spec,
/// the file path, warnings, and source positions.
fn normalized(dir: &Utf8Path, text: &str) -> Value {
    let kf = kraftfile::parse(&dir.join("Kraftfile"), text).unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
    let mut value = serde_json::to_value(&kf).unwrap();
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("location");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let map = value.as_object_mut().unwrap();
    for key in ["spec", "path", "warnings"] {
        map.remove(key);
    }
    strip(&mut value);
    value
}

fn twins(dir: &Utf8Path, v07_body: &str, v06_body: &str) {
    let v07 = normalized(dir, &format!("spec: v0.7\n{v07_body}"));
    let v06 = normalized(dir, &format!("spec: v0.6\n{v06_body}"));
    assert_eq!(v07, v06, "v0.7:\n{v07_body}\nv0.6:\n{v06_body}");
}

fn tempdir() -> (tempfile::TempDir, Utf8PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Utf8PathBuf::from_path_buf(tmp.path().to_owned()).unwrap();
    // A local core must look like one (the loader checks before make runs).
    let core = dir.join("path/to/unikraft");
    std::fs::create_dir_all(&core).unwrap();
    std::fs::write(core.join("Makefile"), "").unwrap();
    std::fs::write(core.join("Config.uk"), "").unwrap();
    (tmp, dir)
}

#[test]
fn forms_shared_with_v06_read_the_same() {
    let (_tmp, dir) = tempdir();
    let same = [
        "name: helloworld\n",
        "cmd: [\"-c\", \"/nginx/conf/nginx.conf\"]\n",
        "cmd:\n  - -c\n  - /nginx/conf/nginx.conf\n",
        "cmd: \"-c /nginx/conf/nginx.conf\"\n",
        "cmd:\n  - env.vars=[ \"HOME=/\" ]\n  - --\n  - -c\n  - /nginx/conf/nginx.conf\n",
        "env:\n  - HOME=/\n",
        "env:\n  HOME: /\n",
        "labels:\n  key: value\n",
        "volumes:\n  - ./src:/dest\n  - ./data:/data:ro\n",
        "volumes:\n  - source: ./src\n    destination: /dest\n    driver: 9pfs\n    readonly: false\n",
        "volumes: ./src:/dest\n",
        "rootfs: ./Dockerfile\n",
        "unikraft: stable\n",
        "unikraft:\n  version: stable\n",
        "unikraft: v0.14.0\n",
        "unikraft: 70bc0af\n",
        "unikraft: https://github.com/unikraft/unikraft.git\n",
        "unikraft:\n  source: https://github.com/unikraft/unikraft.git\n  version: staging\n",
        "unikraft: ssh://git@github.com/unikraft/unikraft.git\n",
        "unikraft: path/to/unikraft\n",
        "unikraft:\n  kconfig:\n  - CONFIG_EXAMPLE=y\n",
        "unikraft:\n  kconfig:\n    CONFIG_EXAMPLE: \"y\"\n",
        "unikraft:\n  source: https://github.com/unikraft/unikraft.git\n  version: stable\n  kconfig:\n    CONFIG_EXAMPLE: \"y\"\n",
        "runtime: unikraft.org/python3:latest\nvolumes:\n  - ./src:/src\ncmd: [\"/src/main.py\"]\n",
        "template: https://github.com/unikraft/app-elfloader.git\n",
        "template:\n  source: https://github.com/unikraft/app-elfloader.git\n  version: staging\n",
        "name: helloworld\nunikraft: stable\nlibraries:\n  musl: stable\n  lwip:\n    source: https://github.com/unikraft/lib-lwip.git\n    version: stable\n    kconfig:\n      CONFIG_LWIP_TCP: \"y\"\n      CONFIG_LWIP_SOCKET: \"y\"\n",
        "targets:\n  - qemu/x86_64\n",
        "targets:\n  - plat: qemu\n    arch: x86_64\n",
        "targets:\n  - platform: qemu\n    architecture: x86_64\n",
        "targets:\n  - qemu/x86_64\n  - plat: qemu\n    arch: arm64\n",
        "unikraft: stable\ntargets:\n  - plat: qemu\n    arch: x86_64\n    kconfig:\n      CONFIG_LIBVFSCORE_AUTOMOUNT_ROOTFS: \"y\"\n      CONFIG_LIBVFSCORE_ROOTFS: \"9pfs\"\n  - plat: qemu\n    arch: arm64\n    kconfig:\n      CONFIG_LIBVFSCORE_ROOTFS: \"initrd\"\n",
    ];
    // (The reference's per-target example lists qemu/x86_64 twice; we build
    // one kernel per platform/architecture and say so, so the second is arm64.)
    for body in same {
        twins(&dir, body, body);
    }
    // `specification` is `spec`.
    assert_eq!(normalized(&dir, "specification: v0.7\nname: a\n"), normalized(&dir, "spec: v0.6\nname: a\n"));
}

#[test]
fn forms_new_in_v07_read_as_their_v06_twin() {
    let (_tmp, dir) = tempdir();
    // A git URL with `@<ref>`.
    twins(
        &dir,
        "unikraft: https://github.com/unikraft/unikraft.git@staging\n",
        "unikraft:\n  source: https://github.com/unikraft/unikraft.git\n  version: staging\n",
    );
    twins(
        &dir,
        "libraries:\n  lwip: https://github.com/unikraft/lib-lwip.git@stable\n",
        "libraries:\n  lwip:\n    source: https://github.com/unikraft/lib-lwip.git\n    version: stable\n",
    );
    // rootfs long-hand, the custom Dockerfile, and the deprecated string source.
    twins(&dir, "rootfs:\n  source:\n    path: ./initramfs.erofs\n    type: erofs\n  format: erofs\n", "rootfs: ./initramfs.erofs\n");
    twins(
        &dir,
        "rootfs:\n  source:\n    type: dockerfile\n    path: .\n    dockerfile: ./custom/path/Dockerfile\n  format: erofs\n",
        "rootfs: .\n",
    );
    twins(&dir, "rootfs:\n  source: ./initramfs.erofs\n  type: erofs\n", "rootfs: ./initramfs.erofs\n");
    // roms: accepted, not applied.
    twins(&dir, "name: a\nroms:\n  - ./extra-data/\n  - source:\n      path: ./assets.erofs\n      type: erofs\n    format: erofs\n", "name: a\n");
}

#[test]
fn v07_warnings_are_located_and_v06_is_untouched() {
    let (_tmp, dir) = tempdir();
    let kf = kraftfile::parse(&dir.join("Kraftfile"), "spec: v0.7\nname: a\nroms:\n  - ./extra\nrootfs:\n  source: ./fs.cpio\n").unwrap();
    let warnings: Vec<String> = kf.warnings.iter().map(|w| w.to_string()).collect();
    assert!(warnings.iter().any(|w| w.contains("Kraftfile:3:1") && w.contains("`roms` is accepted but not applied")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("Kraftfile:6:") && w.contains("deprecated")), "{warnings:?}");
    // In a v0.6 file the v0.7 forms mean what they meant before.
    let v06 = kraftfile::parse(&dir.join("Kraftfile"), "spec: v0.6\nunikraft: https://github.com/unikraft/unikraft.git@staging\n").unwrap();
    let v07 = kraftfile::parse(&dir.join("Kraftfile"), "spec: v0.7\nunikraft: https://github.com/unikraft/unikraft.git@staging\n").unwrap();
    assert_ne!(v06.unikraft, v07.unikraft);
    assert_eq!(v07.unikraft.unwrap().version.as_deref(), Some("staging"));
}
