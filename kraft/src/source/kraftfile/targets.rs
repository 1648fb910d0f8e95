//! `targets`: `plat/arch` strings or maps, platforms and architectures from
//! the known lists (kraftkit's aliases `kvm` → `qemu`, `firecracker` → `fc`).

use super::scalar::Kind;
use super::schema::Cx;
use super::validate;
use super::yaml::{Node, Value};
use super::Target;

impl Cx<'_> {
    fn platform(&self, node: &Node, raw: &str) -> anyhow::Result<String> {
        if raw.is_empty() {
            return Err(self.err(node, "empty platform", "use one of qemu, fc, xen (kvm means qemu)"));
        }
        match validate::platform(raw) {
            Some(p) => Ok(p.to_string()),
            None => Err(self.err(
                node,
                format!("unknown platform `{}`", raw.escape_debug()),
                format!("use one of {}", validate::platform_list()),
            )),
        }
    }

    fn architecture(&self, node: &Node, raw: &str) -> anyhow::Result<String> {
        if raw.is_empty() || raw.contains('/') {
            return Err(self.err(node, format!("`{raw}` is not an architecture"), "use one of x86_64, arm64, arm"));
        }
        if !validate::ARCHITECTURES.contains(&raw) {
            return Err(self.err(
                node,
                format!("unknown architecture `{}`", raw.escape_debug()),
                format!("use one of {}", validate::ARCHITECTURES.join(", ")),
            ));
        }
        Ok(raw.to_string())
    }

    pub fn targets(&mut self, v: &Node) -> anyhow::Result<Vec<Target>> {
        let items = match &v.value {
            Value::Seq(items) => items.as_slice(),
            _ if v.is_null() => &[],
            _ => {
                return Err(self.err(v, format!("`targets` must be a list, found {}", v.describe()), "write `targets: [qemu/x86_64]`"))
            }
        };
        let mut out: Vec<Target> = Vec::new();
        for item in items {
            let t = self.target(item)?;
            if let Some(prev) = out.iter().find(|p| p.id() == t.id()) {
                return Err(self.err(
                    item,
                    format!("target `{}` is listed twice (first on line {})", t.id(), prev.location.line),
                    "kraft-xtask builds one kernel per platform/architecture: remove one, or merge their `kconfig`",
                ));
            }
            out.push(t);
        }
        Ok(out)
    }

    fn target(&mut self, item: &Node) -> anyhow::Result<Target> {
        let location = self.loc(item);
        let split_help = "write `plat/arch`, e.g. `qemu/x86_64`";
        match &item.value {
            Value::Scalar { .. } => {
                let text = match item.scalar() {
                    Some((text, Kind::Str)) => text,
                    _ => {
                        return Err(self.err(item, format!("a target must be `plat/arch` or a map, found {}", item.describe()), split_help))
                    }
                };
                let Some((plat, arch)) = text.split_once('/') else {
                    return Err(self.err(item, format!("invalid target `{text}`: expected `platform/architecture`"), split_help));
                };
                Ok(Target {
                    platform: self.platform(item, plat)?,
                    architecture: self.architecture(item, arch)?,
                    name: None,
                    kconfig: Vec::new(),
                    location,
                })
            }
            Value::Seq(_) => Err(self.err(item, "a target must be `plat/arch` or a map, found a list", split_help)),
            Value::Map(entries) => {
                let mut arch: Option<(&Node, String)> = None;
                let mut plat: Option<(&Node, String)> = None;
                let mut name: Option<(&Node, String)> = None;
                let mut kconfig = Vec::new();
                for (k, val) in entries {
                    let key = self.key(k).to_string();
                    match key.as_str() {
                        "name" | "kernel" => {
                            if let Some((prev, _)) = name {
                                return Err(self.err(
                                    k,
                                    format!("the target's name is given twice (also on line {})", prev.line),
                                    "keep only `name`",
                                ));
                            }
                            let n = self.string(val, &key, "my-kernel")?;
                            self.name(val, "the target name", &n)?;
                            name = Some((k, n));
                        }
                        "architecture" | "arch" => {
                            if let Some((prev, _)) = arch {
                                return Err(self.err(
                                    k,
                                    format!("the target's architecture is given twice (also on line {})", prev.line),
                                    "keep only `architecture`",
                                ));
                            }
                            let raw = self.string(val, &key, "x86_64")?;
                            arch = Some((k, self.architecture(val, &raw)?));
                        }
                        "platform" | "plat" => {
                            if let Some((prev, _)) = plat {
                                return Err(self.err(
                                    k,
                                    format!("the target's platform is given twice (also on line {})", prev.line),
                                    "keep only `platform`",
                                ));
                            }
                            let raw = self.string(val, &key, "qemu")?;
                            let p = match raw.split_once('/') {
                                Some((p, a)) => {
                                    let a = self.architecture(val, a)?;
                                    if let Some((prev, existing)) = &arch {
                                        if *existing != a {
                                            return Err(self.err(
                                                val,
                                                format!("platform `{raw}` names architecture `{a}` but line {} says `{existing}`", prev.line),
                                                "write the platform without `/arch`, or make both agree",
                                            ));
                                        }
                                    } else {
                                        arch = Some((val, a));
                                    }
                                    p.to_string()
                                }
                                None => raw,
                            };
                            plat = Some((k, self.platform(val, &p)?));
                        }
                        "kconfig" => kconfig = self.kconfig(val)?,
                        _ => self.warn(
                            k,
                            format!("unknown key `{key}` in a target (kraftkit ignores it)"),
                            "use `name`, `architecture`/`arch`, `platform`/`plat` or `kconfig`",
                        ),
                    }
                }
                let Some((_, platform)) = plat else {
                    return Err(self.err(item, "this target has no platform", "add `platform: qemu` (or write the target as `qemu/x86_64`)"));
                };
                let Some((_, architecture)) = arch else {
                    return Err(self.err(
                        item,
                        "this target has no architecture",
                        "add `architecture: x86_64` (or write the target as `qemu/x86_64`)",
                    ));
                };
                Ok(Target { platform, architecture, name: name.map(|n| n.1), kconfig, location })
            }
        }
    }
}
