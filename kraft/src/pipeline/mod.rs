//! The build pipeline: lock, fetch, no-op check, plan, execute, record,
//! install. `target` builds a Unikraft image, `sysroot` a plain make project.

pub mod sysroot;
pub mod target;
