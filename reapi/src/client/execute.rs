//! Remote execution and the action cache.
//!
//! [`Client::execute`] sends `Execution.Execute`, follows the stream of
//! `google.longrunning.Operation` updates, and when the stream drops before
//! the operation is done re-attaches with `Execution.WaitExecution` (falling
//! back to a fresh `Execute`, which is idempotent, if the server forgot the
//! operation). The whole call is bounded by [`ClientOptions::execute_timeout`].
//!
//! [`ClientOptions::execute_timeout`]: super::ClientOptions::execute_timeout

use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    action_cache_client::ActionCacheClient, digest_function, execution_client::ExecutionClient,
    ActionResult, Digest, ExecuteRequest, ExecuteResponse, GetActionResultRequest,
    UpdateActionResultRequest, WaitExecutionRequest,
};
use bazel_remote_apis::google::longrunning::{operation, Operation};
use tokio::time::Instant;

use super::{backoff, Client, MAX_MESSAGE_BYTES};
use crate::digest::{decode, digest_string};
use crate::error::{Error, Result, RpcStatus};

const SHA256: i32 = digest_function::Value::Sha256 as i32;
/// Consecutive stream failures tolerated before `execute` gives up.
const MAX_STREAM_FAILURES: u32 = 8;

/// Result of a successful [`Client::execute`].
#[derive(Debug, Clone)]
pub struct ExecuteOutcome {
    /// The action result (check `exit_code`: a failing command is not an error).
    pub result: ActionResult,
    /// Whether the server answered from its action cache.
    pub cached_result: bool,
    /// Name of the long-running operation (empty for cache hits on some servers).
    pub operation_name: String,
    /// Free-form message from the server, if any.
    pub message: String,
    /// How many times the operation stream dropped and was re-attached
    /// (WaitExecution) or re-submitted.
    pub stream_retries: u32,
}

enum StreamEnd {
    Done(Box<Operation>),
    /// Stream ended or broke before completion; retry with WaitExecution.
    Dropped(Error),
}

impl Client {
    /// Looks up an action in the action cache. `Ok(None)` on a miss.
    pub fn get_action_result(&self, action_digest: &Digest) -> Result<Option<ActionResult>> {
        const OP: &str = "ActionCache.GetActionResult";
        let t = self.opts.rpc_timeout;
        let res = self.block_on(self.unary(OP, t, |ch| {
            let req = Self::request(
                GetActionResultRequest {
                    instance_name: self.instance.clone(),
                    action_digest: Some(action_digest.clone()),
                    inline_stdout: false,
                    inline_stderr: false,
                    inline_output_files: vec![],
                    digest_function: SHA256,
                },
                t,
            );
            async move {
                ActionCacheClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .get_action_result(req)
                    .await
            }
        }));
        match res {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.rpc_code() == Some(tonic::Code::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores a result in the action cache; returns what the server stored.
    pub fn update_action_result(
        &self,
        action_digest: &Digest,
        result: &ActionResult,
    ) -> Result<ActionResult> {
        const OP: &str = "ActionCache.UpdateActionResult";
        let t = self.opts.rpc_timeout;
        self.block_on(self.unary(OP, t, |ch| {
            let req = Self::request(
                UpdateActionResultRequest {
                    instance_name: self.instance.clone(),
                    action_digest: Some(action_digest.clone()),
                    action_result: Some(result.clone()),
                    results_cache_policy: None,
                    digest_function: SHA256,
                },
                t,
            );
            async move {
                ActionCacheClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .update_action_result(req)
                    .await
            }
        }))
    }

    /// Executes an action whose Action, Command and inputs are already in
    /// the CAS, blocking until it completes. A non-zero exit code is
    /// returned in the result, not as an error.
    pub fn execute(
        &self,
        action_digest: &Digest,
        skip_cache_lookup: bool,
    ) -> Result<ExecuteOutcome> {
        self.block_on(self.execute_async(action_digest, skip_cache_lookup))
    }

    pub(crate) async fn execute_async(
        &self,
        action_digest: &Digest,
        skip_cache_lookup: bool,
    ) -> Result<ExecuteOutcome> {
        let total = self.opts.execute_timeout;
        let deadline = Instant::now() + total;
        let mut op_name: Option<String> = None;
        let mut failures = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let op = if op_name.is_some() {
                "Execution.WaitExecution"
            } else {
                "Execution.Execute"
            };
            if remaining.is_zero() {
                return Err(self.timeout_err(op, total));
            }
            let end = match tokio::time::timeout_at(
                deadline,
                self.follow_stream(action_digest, skip_cache_lookup, &mut op_name, remaining),
            )
            .await
            {
                Err(_) => return Err(self.timeout_err(op, total)),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(end)) => end,
            };
            match end {
                StreamEnd::Done(done) => {
                    let mut outcome = self.finish(action_digest, *done)?;
                    outcome.stream_retries = failures;
                    return Ok(outcome);
                }
                StreamEnd::Dropped(err) => {
                    failures += 1;
                    if failures > MAX_STREAM_FAILURES {
                        return Err(err);
                    }
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        }
    }

    /// Opens Execute (or WaitExecution when `op_name` is known) and reads
    /// Operation updates until done or the stream ends.
    async fn follow_stream(
        &self,
        action_digest: &Digest,
        skip_cache_lookup: bool,
        op_name: &mut Option<String>,
        timeout: Duration,
    ) -> Result<StreamEnd> {
        let mut client =
            ExecutionClient::new(self.channel()).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let (op, res) = match op_name.clone() {
            Some(name) => (
                "Execution.WaitExecution",
                client
                    .wait_execution(Self::request(WaitExecutionRequest { name }, timeout))
                    .await,
            ),
            None => (
                "Execution.Execute",
                client
                    .execute(Self::request(
                        ExecuteRequest {
                            instance_name: self.instance.clone(),
                            skip_cache_lookup,
                            action_digest: Some(action_digest.clone()),
                            execution_policy: None,
                            results_cache_policy: None,
                            digest_function: SHA256,
                            inline_stdout: false,
                            inline_stderr: false,
                            inline_output_files: vec![],
                        },
                        timeout,
                    ))
                    .await,
            ),
        };
        let mut stream = match res {
            Ok(s) => s.into_inner(),
            Err(status) => return self.stream_failure(op, &status, op_name),
        };
        loop {
            match stream.message().await {
                Ok(Some(operation)) => {
                    if !operation.name.is_empty() {
                        *op_name = Some(operation.name.clone());
                    }
                    if operation.done {
                        return Ok(StreamEnd::Done(Box::new(operation)));
                    }
                }
                Ok(None) => {
                    return Ok(StreamEnd::Dropped(
                        self.bad(op, "operation stream ended before the operation was done"),
                    ))
                }
                Err(status) => return self.stream_failure(op, &status, op_name),
            }
        }
    }

    /// Classifies a stream error: transient ones are retried (with
    /// WaitExecution if we know the operation name), others are fatal.
    fn stream_failure(
        &self,
        op: &str,
        status: &tonic::Status,
        op_name: &mut Option<String>,
    ) -> Result<StreamEnd> {
        let err = self.rpc_err(op, status);
        match status.code() {
            // The server forgot the operation: Execute again (idempotent).
            tonic::Code::NotFound if op_name.is_some() => {
                *op_name = None;
                Ok(StreamEnd::Dropped(err))
            }
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Aborted
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Internal
                if op_name.is_some() || status.code() == tonic::Code::Unavailable =>
            {
                Ok(StreamEnd::Dropped(err))
            }
            _ => Err(err),
        }
    }

    /// Turns a finished Operation into an outcome or an error.
    fn finish(&self, action_digest: &Digest, op: Operation) -> Result<ExecuteOutcome> {
        const OP: &str = "Execution.Execute";
        let exec_failed = |code: i32, message: String| Error::ExecutionFailed {
            server: self.server.clone(),
            action: digest_string(action_digest),
            status: RpcStatus::from_code(code, message),
        };
        let any = match op.result {
            Some(operation::Result::Error(status)) => {
                return Err(exec_failed(status.code, status.message))
            }
            Some(operation::Result::Response(any)) => any,
            None => {
                return Err(self.bad(OP, format!("operation {} done without a result", op.name)))
            }
        };
        if !any
            .type_url
            .ends_with("build.bazel.remote.execution.v2.ExecuteResponse")
        {
            return Err(self.bad(OP, format!("unexpected response type {:?}", any.type_url)));
        }
        let resp: ExecuteResponse =
            decode("ExecuteResponse", &any.value).map_err(|e| self.bad(OP, e))?;
        if let Some(status) = resp.status.as_ref().filter(|s| s.code != 0) {
            let mut msg = status.message.clone();
            if !resp.message.is_empty() {
                msg = format!("{msg} ({})", resp.message);
            }
            return Err(exec_failed(status.code, msg));
        }
        let result = resp
            .result
            .ok_or_else(|| self.bad(OP, format!("operation {} has no ActionResult", op.name)))?;
        Ok(ExecuteOutcome {
            result,
            cached_result: resp.cached_result,
            operation_name: op.name,
            message: resp.message,
            stream_retries: 0,
        })
    }
}
