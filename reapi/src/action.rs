//! Builders for `Command` and `Action` messages.
//!
//! They enforce the canonical forms REAPI asks for, so that the same build
//! step always produces the same action digest (and therefore hits the
//! action cache): environment variables sorted by name, output paths sorted
//! and deduplicated, platform properties sorted by name then value.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    command::EnvironmentVariable, platform::Property, Action, Command, Digest, Platform,
};
use bazel_remote_apis::google::protobuf::Duration as PbDuration;

use crate::digest::Blob;
use crate::error::{Error, Result};
use crate::merkle::split_relative_path;

/// Builds a sorted `Platform` from `(name, value)` pairs (duplicates removed).
pub fn platform<I, K, V>(properties: I) -> Platform
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    let set: BTreeSet<(String, String)> = properties
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    Platform {
        properties: set
            .into_iter()
            .map(|(name, value)| Property { name, value })
            .collect(),
    }
}

/// Builder for a `Command`.
#[derive(Debug, Clone, Default)]
pub struct CommandBuilder {
    arguments: Vec<String>,
    env: BTreeMap<String, String>,
    output_paths: BTreeSet<String>,
    working_directory: String,
    platform: BTreeSet<(String, String)>,
}

impl CommandBuilder {
    /// Starts a command with its argv (`argv[0]` is the program).
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            arguments: argv.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Sets an environment variable (last value wins).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// Declares an output file or directory, relative to the working directory.
    pub fn output(mut self, path: impl Into<String>) -> Self {
        self.output_paths.insert(path.into());
        self
    }

    /// Working directory relative to the input root ("" = the root).
    pub fn working_directory(mut self, dir: impl Into<String>) -> Self {
        self.working_directory = dir.into();
        self
    }

    /// Adds a platform property (also copy it to the action, see
    /// [`ActionBuilder::platform_from`]).
    pub fn platform_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.platform.insert((name.into(), value.into()));
        self
    }

    /// Validates and produces the `Command`.
    pub fn build(self) -> Result<Command> {
        if self.arguments.is_empty() {
            return Err(Error::InvalidArgument("command has no arguments".into()));
        }
        for p in &self.output_paths {
            split_relative_path(p)?;
        }
        if !self.working_directory.is_empty() {
            split_relative_path(&self.working_directory)?;
        }
        let platform = if self.platform.is_empty() {
            None
        } else {
            Some(platform(self.platform))
        };
        #[allow(deprecated)]
        Ok(Command {
            arguments: self.arguments,
            environment_variables: self
                .env
                .into_iter()
                .map(|(name, value)| EnvironmentVariable { name, value })
                .collect(),
            output_paths: self.output_paths.into_iter().collect(),
            working_directory: self.working_directory,
            // Deprecated in v2.2 in favour of Action.platform, but still read
            // by older servers; REAPI asks clients to set both.
            platform,
            ..Command::default()
        })
    }
}

/// Builder for an `Action`.
#[derive(Debug, Clone)]
pub struct ActionBuilder {
    action: Action,
}

impl ActionBuilder {
    /// An action running `command_digest` over `input_root_digest`.
    pub fn new(command_digest: Digest, input_root_digest: Digest) -> Self {
        Self {
            action: Action {
                command_digest: Some(command_digest),
                input_root_digest: Some(input_root_digest),
                ..Action::default()
            },
        }
    }

    /// Execution timeout enforced by the server/worker.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.action.timeout = Some(PbDuration {
            seconds: t.as_secs() as i64,
            nanos: t.subsec_nanos() as i32,
        });
        self
    }

    /// Never cache the result (and never serve it from cache).
    pub fn do_not_cache(mut self, yes: bool) -> Self {
        self.action.do_not_cache = yes;
        self
    }

    /// Salt mixed into the action digest to force cache misses.
    pub fn salt(mut self, salt: impl Into<Vec<u8>>) -> Self {
        self.action.salt = salt.into();
        self
    }

    /// Sets the platform from `(name, value)` pairs (sorted canonically).
    pub fn platform<I, K, V>(mut self, properties: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let p = platform(properties);
        self.action.platform = if p.properties.is_empty() {
            None
        } else {
            Some(p)
        };
        self
    }

    /// Copies the (deprecated) platform of a `Command` into the action.
    #[allow(deprecated)]
    pub fn platform_from(mut self, command: &Command) -> Self {
        self.action.platform = command.platform.clone();
        self
    }

    /// The `Action`.
    pub fn build(self) -> Action {
        self.action
    }
}

/// A ready-to-upload action: the `Action` and `Command` blobs and the action digest.
#[derive(Debug, Clone)]
pub struct PreparedAction {
    /// The action message.
    pub action: Action,
    /// Blob of the encoded action (its digest is the action digest).
    pub action_blob: Blob,
    /// Blob of the encoded command.
    pub command_blob: Blob,
}

impl PreparedAction {
    /// Encodes `command`, builds the action over `input_root` with the
    /// command's platform, and applies `f` to the action builder.
    pub fn new(
        command: &Command,
        input_root: Digest,
        f: impl FnOnce(ActionBuilder) -> ActionBuilder,
    ) -> Self {
        let command_blob = Blob::from_message(command);
        let action =
            f(ActionBuilder::new(command_blob.digest.clone(), input_root).platform_from(command))
                .build();
        let action_blob = Blob::from_message(&action);
        Self {
            action,
            action_blob,
            command_blob,
        }
    }

    /// The action digest.
    pub fn digest(&self) -> &Digest {
        &self.action_blob.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::digest_of;

    #[test]
    fn canonical_command() {
        let c = CommandBuilder::new(["cc", "-c"])
            .env("Z", "1")
            .env("A", "2")
            .output("out/b.o")
            .output("a.o")
            .output("a.o")
            .platform_property("OSFamily", "linux")
            .platform_property("ISA", "x86-64")
            .build()
            .unwrap();
        let env: Vec<_> = c
            .environment_variables
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(env, ["A", "Z"]);
        assert_eq!(c.output_paths, ["a.o", "out/b.o"]);
        #[allow(deprecated)]
        let names: Vec<_> = c
            .platform
            .as_ref()
            .unwrap()
            .properties
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["ISA", "OSFamily"]);
        assert!(CommandBuilder::new(["x"]).output("/abs").build().is_err());
        assert!(CommandBuilder::new(Vec::<String>::new()).build().is_err());
    }

    #[test]
    fn action_digest_stable() {
        let c = CommandBuilder::new(["true"]).build().unwrap();
        let a = PreparedAction::new(&c, digest_of(b""), |b| b.timeout(Duration::from_secs(5)));
        let b = PreparedAction::new(&c, digest_of(b""), |b| b.timeout(Duration::from_secs(5)));
        assert_eq!(a.digest(), b.digest());
        let s = PreparedAction::new(&c, digest_of(b""), |b| b.salt(b"x".to_vec()));
        assert_ne!(a.digest(), s.digest());
        assert_eq!(a.action.timeout.as_ref().unwrap().seconds, 5);
    }
}
