//! The remote cache's HTTP transport: `GET`, `HEAD` and `PUT` on
//! `<base>/<kind>/<name>` with the tier's agent and timeouts. The first
//! failure of a build warns once and switches the tier off
//! ([`Inner::fail`]); nothing here ever fails a build.

use std::sync::atomic::Ordering;

use super::{Fetch, Inner};

impl Inner {
    /// The first failure of the build: one warning, then the tier is off.
    pub(super) fn fail(&self, what: &str, error: &str) {
        if !self.disabled.swap(true, Ordering::SeqCst) {
            self.warn(format!(
                "remote cache {} unavailable ({what}: {error}); using the local cache only for the rest of this build",
                self.base
            ));
        }
    }

    fn url(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}/{name}", self.base)
    }

    pub(super) fn get(&self, kind: &str, name: &str, limit: u64) -> Result<Vec<u8>, Fetch> {
        if !self.enabled() {
            return Err(Fetch::Failed);
        }
        let url = self.url(kind, name);
        match self.agent.get(&url).call() {
            Ok(mut response) => match response.status().as_u16() {
                200 => match response.body_mut().with_config().limit(limit).read_to_vec() {
                    Ok(bytes) => Ok(bytes),
                    Err(ureq::Error::BodyExceedsLimit(_)) => Err(Fetch::TooBig),
                    Err(e) => {
                        self.fail(&format!("GET /{kind}/{name}"), &e.to_string());
                        Err(Fetch::Failed)
                    }
                },
                404 => Err(Fetch::Missing),
                status => {
                    self.fail(&format!("GET /{kind}/{name}"), &format!("HTTP {status}"));
                    Err(Fetch::Failed)
                }
            },
            Err(e) => {
                self.fail(&format!("GET /{kind}/{name}"), &e.to_string());
                Err(Fetch::Failed)
            }
        }
    }

    /// `Some(exists)`, or `None` after a failure.
    pub(super) fn head(&self, kind: &str, name: &str) -> Option<bool> {
        if !self.enabled() {
            return None;
        }
        match self.agent.head(&self.url(kind, name)).call() {
            Ok(response) => match response.status().as_u16() {
                200..=299 => Some(true),
                404 => Some(false),
                status => {
                    self.fail(&format!("HEAD /{kind}/{name}"), &format!("HTTP {status}"));
                    None
                }
            },
            Err(e) => {
                self.fail(&format!("HEAD /{kind}/{name}"), &e.to_string());
                None
            }
        }
    }

    pub(super) fn put(&self, kind: &str, name: &str, body: &[u8]) -> bool {
        if !self.enabled() {
            return false;
        }
        match self.agent.put(&self.url(kind, name)).send(body) {
            Ok(response) if response.status().is_success() => {
                self.uploaded_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                true
            }
            Ok(response) => {
                self.fail(&format!("PUT /{kind}/{name}"), &format!("HTTP {}", response.status().as_u16()));
                false
            }
            Err(e) => {
                self.fail(&format!("PUT /{kind}/{name}"), &e.to_string());
                false
            }
        }
    }
}
