//! Which package provides each host program, per distribution: the one
//! table `doctor` reads (and the tests check).

/// The distributions `doctor` prints install commands for, in print order,
/// with the command that installs packages there.
pub const DISTRIBUTIONS: &[(&str, &str)] = &[
    ("Debian/Ubuntu", "sudo apt-get install -y"),
    ("Fedora", "sudo dnf install -y"),
    ("Arch", "sudo pacman -S --needed"),
    ("Alpine", "sudo apk add"),
    ("openSUSE", "sudo zypper install -y"),
];

/// A host program and its package on each of [`DISTRIBUTIONS`] (same
/// order); `None` where that distribution does not package it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostProgram {
    pub program: &'static str,
    /// What the build uses it for (printed beside a missing one).
    pub purpose: &'static str,
    pub packages: [Option<&'static str>; 5],
}

const fn all(package: &'static str) -> [Option<&'static str>; 5] {
    [Some(package); 5]
}

pub const PROGRAMS: &[HostProgram] = &[
    HostProgram { program: "make", purpose: "runs Unikraft's build system to plan", packages: all("make") },
    HostProgram { program: "gcc", purpose: "compiles native targets and Unikraft's host tools", packages: all("gcc") },
    HostProgram {
        program: "aarch64-linux-gnu-gcc",
        purpose: "cross-compiles arm64 targets (CROSS_COMPILE=aarch64-linux-gnu-)",
        packages: [Some("gcc-aarch64-linux-gnu"), Some("gcc-aarch64-linux-gnu"), Some("aarch64-linux-gnu-gcc"), None, Some("cross-aarch64-gcc14")],
    },
    HostProgram {
        program: "x86_64-linux-gnu-gcc",
        purpose: "cross-compiles x86_64 targets (CROSS_COMPILE=x86_64-linux-gnu-)",
        packages: [Some("gcc-x86-64-linux-gnu"), Some("gcc-x86_64-linux-gnu"), None, None, Some("cross-x86_64-gcc14")],
    },
    HostProgram {
        program: "arm-linux-gnueabihf-gcc",
        purpose: "cross-compiles arm targets (CROSS_COMPILE=arm-linux-gnueabihf-)",
        packages: [Some("gcc-arm-linux-gnueabihf"), Some("gcc-arm-linux-gnu"), None, None, Some("cross-arm-gcc14")],
    },
    HostProgram { program: "flex", purpose: "builds Unikraft's kconfig tools", packages: all("flex") },
    HostProgram { program: "bison", purpose: "builds Unikraft's kconfig tools", packages: all("bison") },
    HostProgram { program: "bwrap", purpose: "the build sandbox (bubblewrap is required; KRAFT_SANDBOX=none builds unsandboxed, explicitly)", packages: all("bubblewrap") },
    HostProgram { program: "git", purpose: "fetches and pins git components", packages: all("git") },
    HostProgram {
        program: "python3",
        purpose: "runs Unikraft's build scripts",
        packages: [Some("python3"), Some("python3"), Some("python"), Some("python3"), Some("python3")],
    },
    HostProgram {
        program: "qemu-system-x86_64",
        purpose: "boots x86_64 images (`run`)",
        packages: [Some("qemu-system-x86"), Some("qemu-system-x86"), Some("qemu-system-x86"), Some("qemu-system-x86_64"), Some("qemu-x86")],
    },
    HostProgram {
        program: "qemu-system-aarch64",
        purpose: "boots arm64 images (`run`)",
        packages: [Some("qemu-system-arm"), Some("qemu-system-aarch64"), Some("qemu-system-aarch64"), Some("qemu-system-aarch64"), Some("qemu-arm")],
    },
];

/// The table's entry for `program`.
pub fn program(name: &str) -> Option<&'static HostProgram> {
    PROGRAMS.iter().find(|p| p.program == name)
}
