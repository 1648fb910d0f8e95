//! Running one lease: decode the payload (an `Action`, or its `Digest`),
//! fetch the `Command`, materialise the input root into a private sandbox
//! directory, call the executor, upload the outputs and build the
//! `ActionResult` that goes back to the server packed in `Lease.result`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    Action, ActionResult, Command, Digest, ExecutedActionMetadata, OutputFile,
};
use bazel_remote_apis::google::protobuf::Timestamp;

use super::fs::{collect_outputs, create_output_parents, materialise, CollectedOutputs};
use super::{ExecutorError, WorkRequest, WorkResult, WorkerConfig};
use crate::client::Client;
use crate::digest::{decode, digest_message, digest_string, Blob};
use crate::error::{Error, Result};
use crate::merkle::split_relative_path;
use crate::proto::remoteworkers::Lease;

pub(crate) const ACTION_TYPE: &str = "build.bazel.remote.execution.v2.Action";
pub(crate) const DIGEST_TYPE: &str = "build.bazel.remote.execution.v2.Digest";
pub(crate) const ACTION_RESULT_URL: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.ActionResult";

fn now() -> Option<Timestamp> {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Some(Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

/// Decodes the lease payload into (action digest, action).
fn load_action(client: &Client, lease: &Lease) -> Result<(Digest, Action)> {
    let op = format!("lease {} payload", lease.id);
    let any = lease
        .payload
        .as_ref()
        .ok_or_else(|| client.bad(&op, "lease has no payload"))?;
    if any.type_url.ends_with(ACTION_TYPE) {
        let action: Action = decode("Action", &any.value).map_err(|e| client.bad(&op, e))?;
        let (digest, _) = digest_message(&action);
        Ok((digest, action))
    } else if any.type_url.ends_with(DIGEST_TYPE) {
        let digest: Digest = decode("Digest", &any.value).map_err(|e| client.bad(&op, e))?;
        let bytes = client.read_blob(&digest)?;
        let action = decode("Action", &bytes).map_err(|e| client.bad(&op, e))?;
        Ok((digest, action))
    } else {
        Err(client.bad(&op, format!("unsupported payload type {:?}", any.type_url)))
    }
}

/// Runs the lease and returns the `ActionResult` to report. Errors mean the
/// action could not be run (not that the command failed).
pub(crate) fn run_lease<F>(
    client: &Client,
    cfg: &WorkerConfig,
    bot_id: &str,
    lease: &Lease,
    executor: &F,
) -> Result<ActionResult>
where
    F: Fn(&WorkRequest) -> std::result::Result<WorkResult, ExecutorError>,
{
    let mut meta = ExecutedActionMetadata {
        worker: bot_id.to_string(),
        worker_start_timestamp: now(),
        ..Default::default()
    };
    let (action_digest, action) = load_action(client, lease)?;
    let op = format!("action {}", digest_string(&action_digest));
    let command_digest = action
        .command_digest
        .clone()
        .ok_or_else(|| client.bad(&op, "action has no command_digest"))?;
    let input_root = action
        .input_root_digest
        .clone()
        .ok_or_else(|| client.bad(&op, "action has no input_root_digest"))?;
    let command: Command =
        decode("Command", &client.read_blob(&command_digest)?).map_err(|e| client.bad(&op, e))?;
    if command.arguments.is_empty() {
        return Err(client.bad(&op, "command has no arguments"));
    }

    let sandbox = Sandbox::create(&cfg.work_dir, &lease.id, cfg.keep_sandboxes)?;
    let root = sandbox.path.join("root");
    std::fs::create_dir(&root).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;

    meta.input_fetch_start_timestamp = now();
    // Directories the command says it writes into beyond its outputs.
    let private: Vec<String> = match &cfg.private_dirs_property {
        Some(key) => action
            .platform
            .iter()
            .flat_map(|p| p.properties.iter())
            .filter(|p| &p.name == key)
            .flat_map(|p| p.value.split(',').map(|d| d.trim().to_string()))
            .filter(|d| !d.is_empty())
            .collect(),
        None => Vec::new(),
    };
    let shared_dirs = materialise(client, &input_root, &root, cfg, &declared_outputs(&command), &private)?;
    meta.input_fetch_completed_timestamp = now();

    let working_dir = if command.working_directory.is_empty() {
        root.clone()
    } else {
        split_relative_path(&command.working_directory)
            .map_err(|e| client.bad(&op, e.to_string()))?;
        root.join(&command.working_directory)
    };
    std::fs::create_dir_all(&working_dir)
        .map_err(|e| Error::io(format!("creating {}", working_dir.display()), e))?;
    let outputs = declared_outputs(&command);
    create_output_parents(&working_dir, &outputs).map_err(|e| client.bad(&op, e.to_string()))?;

    let timeout = action
        .timeout
        .as_ref()
        .filter(|t| t.seconds > 0 || t.nanos > 0)
        .map(|t| {
            Duration::new(
                t.seconds.max(0) as u64,
                t.nanos.clamp(0, 999_999_999) as u32,
            )
        });
    let request = WorkRequest {
        lease_id: lease.id.clone(),
        action_digest,
        action,
        command,
        input_root: root.clone(),
        shared_dirs,
        working_dir: working_dir.clone(),
        timeout,
    };
    meta.execution_start_timestamp = now();
    let result = executor(&request).map_err(|e| Error::Executor(format!("{op}: {e}")))?;
    meta.execution_completed_timestamp = now();

    meta.output_upload_start_timestamp = now();
    let collected = match result.output_files {
        None => collect_outputs(&working_dir, &outputs)?,
        Some(files) => {
            let mut c = CollectedOutputs::default();
            for f in files {
                split_relative_path(&f.path)?;
                let blob = Blob::new(f.contents);
                c.files.push(OutputFile {
                    path: f.path,
                    digest: Some(blob.digest.clone()),
                    is_executable: f.is_executable,
                    contents: vec![],
                    node_properties: None,
                });
                c.blobs.push(blob);
            }
            c
        }
    };
    let stdout = Blob::new(result.stdout);
    let stderr = Blob::new(result.stderr);
    let mut blobs = collected.blobs;
    blobs.push(stdout.clone());
    blobs.push(stderr.clone());
    client.upload_missing(&blobs)?;
    meta.output_upload_completed_timestamp = now();
    meta.worker_completed_timestamp = now();

    let mut files = collected.files;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    #[allow(deprecated)]
    Ok(ActionResult {
        output_files: files,
        output_symlinks: collected.symlinks,
        output_directories: collected.directories,
        exit_code: result.exit_code,
        stdout_digest: Some(stdout.digest),
        stderr_digest: Some(stderr.digest),
        execution_metadata: Some(meta),
        ..Default::default()
    })
}

/// `output_paths`, or the deprecated `output_files` + `output_directories`
/// of pre-v2.1 clients.
#[allow(deprecated)]
fn declared_outputs(command: &Command) -> Vec<String> {
    if !command.output_paths.is_empty() {
        command.output_paths.clone()
    } else {
        command
            .output_files
            .iter()
            .chain(&command.output_directories)
            .cloned()
            .collect()
    }
}

/// A per-lease directory under the worker's `work_dir`, removed on drop.
struct Sandbox {
    path: std::path::PathBuf,
    keep: bool,
}

impl Sandbox {
    fn create(work_dir: &Path, lease_id: &str, keep: bool) -> Result<Self> {
        let safe: String = lease_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(80)
            .collect();
        let path = work_dir.join(format!(
            "lease-{safe}-{}",
            &crate::digest::random_uuid()[..8]
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok(Self { path, keep })
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: inputs are written 0644/0755 in writable
            // directories, so this only fails if the executor made
            // directories read-only; the sandbox is then left behind.
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
