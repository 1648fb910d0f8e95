//! A build target (platform and architecture) and what it contributes to
//! the configuration: its kconfig symbols and the cross-compiler prefix.

use serde::{Deserialize, Serialize};

/// Platform and architecture, as in a Kraftfile target (`qemu/x86_64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub plat: String,
    pub arch: String,
}

impl Target {
    pub fn new(plat: &str, arch: &str) -> Target {
        Target { plat: plat.into(), arch: arch.into() }
    }

    /// The kconfig symbols selecting this target (what kraftkit's
    /// platform/architecture components contribute).
    pub fn kconfig(&self) -> Vec<(String, String)> {
        let y = |k: &str| (k.to_string(), "y".to_string());
        let mut out = Vec::new();
        match self.plat.as_str() {
            "qemu" => out.extend([y("CONFIG_PLAT_KVM"), y("CONFIG_KVM_VMM_QEMU")]),
            "fc" | "firecracker" => out.extend([y("CONFIG_PLAT_KVM"), y("CONFIG_KVM_VMM_FIRECRACKER")]),
            "xen" => out.push(y("CONFIG_PLAT_XEN")),
            other => out.push(y(&format!("CONFIG_PLAT_{}", other.to_uppercase()))),
        }
        match self.arch.as_str() {
            "x86_64" => out.push(y("CONFIG_ARCH_X86_64")),
            "arm64" => out.push(y("CONFIG_ARCH_ARM_64")),
            "arm" => out.push(y("CONFIG_ARCH_ARM_32")),
            other => out.push(y(&format!("CONFIG_ARCH_{}", other.to_uppercase()))),
        }
        out
    }
}

impl Target {
    /// The GNU triple of the target's architecture (`aarch64-linux-gnu`),
    /// as kraftkit names cross toolchains.
    pub fn gnu_triple(&self) -> Option<&'static str> {
        match self.arch.as_str() {
            "x86_64" => Some("x86_64-linux-gnu"),
            "arm64" => Some("aarch64-linux-gnu"),
            "arm" => Some("arm-linux-gnueabihf"),
            _ => None,
        }
    }

    /// `CROSS_COMPILE` for make when the target's architecture is not the
    /// host's (`aarch64-linux-gnu-` for arm64 on an x86_64 host), as
    /// kraftkit sets it; `None` for a native build.
    pub fn cross_compile(&self) -> Option<String> {
        let triple = self.gnu_triple()?;
        let target_cpu = triple.split('-').next()?;
        let host_cpu = std::env::consts::ARCH;
        let native = target_cpu == host_cpu || (target_cpu == "arm" && host_cpu == "arm");
        (!native).then(|| format!("{triple}-"))
    }

    /// The C compiler a build of this target runs.
    pub fn compiler(&self) -> String {
        format!("{}gcc", self.cross_compile().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn cross_prefix_only_for_foreign_architectures() {
        let arm = Target::new("qemu", "arm64");
        let x86 = Target::new("fc", "x86_64");
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(arm.cross_compile().as_deref(), Some("aarch64-linux-gnu-"));
            assert_eq!(x86.cross_compile(), None);
            assert_eq!(arm.compiler(), "aarch64-linux-gnu-gcc");
        } else if std::env::consts::ARCH == "aarch64" {
            assert_eq!(x86.cross_compile().as_deref(), Some("x86_64-linux-gnu-"));
            assert_eq!(arm.cross_compile(), None);
        }
    }
}
