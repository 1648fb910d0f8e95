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
