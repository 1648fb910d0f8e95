//! Blocking REAPI v2 client.
//!
//! [`Client`] owns a small multi-threaded tokio runtime and a single HTTP/2
//! channel; every public method blocks the calling thread until the RPC(s)
//! finish, so it can be shared (`Client` is `Send + Sync`) by the threads of a
//! synchronous build engine. Every RPC has a deadline (sent to the server as
//! `grpc-timeout` and enforced locally), transient failures (`UNAVAILABLE`,
//! `RESOURCE_EXHAUSTED`, `ABORTED`, deadline) are retried a few times with
//! backoff, and every error names the server URL and the RPC.
//!
//! Submodules: `cas` (CAS + ByteStream transfers), `execute` (Execution and
//! ActionCache).

mod cas;
mod execute;

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    capabilities_client::CapabilitiesClient, digest_function, GetCapabilitiesRequest,
    ServerCapabilities,
};
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result, RpcStatus};

pub use execute::ExecuteOutcome;

/// Largest gRPC message this client accepts (BatchReadBlobs responses can be
/// close to the server's batch limit, above tonic's 4 MiB default).
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Tunables for [`Client`]. `Default` gives sensible values.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline for each unary RPC and each ByteStream chunk round trip.
    pub rpc_timeout: Duration,
    /// Deadline for establishing the connection.
    pub connect_timeout: Duration,
    /// Overall deadline for one `execute` (queueing + running the action).
    pub execute_timeout: Duration,
    /// Chunk size for ByteStream Write (must stay well below 4 MiB).
    pub bytestream_chunk_bytes: usize,
    /// Caps the batch size below the server's `max_batch_total_size_bytes`
    /// (useful in tests to force the ByteStream path). `None` = server value.
    pub max_batch_bytes: Option<usize>,
    /// How many times a transient failure is retried.
    pub retries: u32,
    /// Worker threads of the internal tokio runtime.
    pub runtime_threads: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            rpc_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            execute_timeout: Duration::from_secs(3 * 3600),
            bytestream_chunk_bytes: 1024 * 1024,
            max_batch_bytes: None,
            retries: 3,
            runtime_threads: 2,
        }
    }
}

/// What the server supports, as far as this client cares.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// Usable size of a batch request (server limit, capped by
    /// [`ClientOptions::max_batch_bytes`]; 4 MiB minus headroom when the
    /// server does not say).
    pub max_batch_bytes: usize,
    /// Whether the Execution service is enabled.
    pub exec_enabled: bool,
    /// Whether clients may write to the action cache.
    pub action_cache_update_enabled: bool,
    /// The full message.
    pub raw: ServerCapabilities,
}

/// Blocking client for one REAPI server and instance name.
///
/// Share it between threads (`Arc<Client>` or `&Client`); calls may run
/// concurrently. Do not call it (or drop it) from inside another tokio
/// runtime's async context: its methods block on its own runtime.
pub struct Client {
    rt: tokio::runtime::Runtime,
    channel: Channel,
    server: String,
    instance: String,
    opts: ClientOptions,
    caps: Mutex<Option<Capabilities>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// Converts `grpc://` / `http://` URLs to the form tonic expects.
pub(crate) fn endpoint_uri(url: &str) -> Result<String> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = if let Some(r) = url.strip_prefix("grpc://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("grpcs://") || url.starts_with("https://") {
        return Err(invalid(
            "TLS is not supported yet (build without TLS features); use grpc://",
        ));
    } else {
        return Err(invalid("expected grpc://HOST:PORT or http://HOST:PORT"));
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(invalid("expected grpc://HOST:PORT with no path"));
    }
    Ok(format!("http://{rest}"))
}

impl Client {
    /// Connects with default options. `url` is `grpc://HOST:PORT`
    /// (or `http://`), `instance` the REAPI instance name ("" for default).
    pub fn connect(url: &str, instance: &str) -> Result<Self> {
        Self::connect_with(url, instance, ClientOptions::default())
    }

    /// Connects with explicit options. Fails if the server is unreachable.
    pub fn connect_with(url: &str, instance: &str, opts: ClientOptions) -> Result<Self> {
        let uri = endpoint_uri(url)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.runtime_threads.max(1))
            .thread_name("kraft-reapi")
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start tokio runtime", e))?;
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| Error::InvalidUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })?
            .connect_timeout(opts.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let channel = rt
            .block_on(async {
                tokio::time::timeout(opts.connect_timeout, endpoint.connect()).await
            })
            .map_err(|_| Error::Connect {
                server: url.to_string(),
                reason: format!("timed out after {:?}", opts.connect_timeout),
            })?
            .map_err(|e| Error::Connect {
                server: url.to_string(),
                reason: error_chain(&e),
            })?;
        Ok(Self {
            rt,
            channel,
            server: url.to_string(),
            instance: instance.to_string(),
            opts,
            caps: Mutex::new(None),
        })
    }

    /// The server URL this client talks to.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The REAPI instance name.
    pub fn instance_name(&self) -> &str {
        &self.instance
    }

    /// The options in force.
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// Fetches (once, then cached) and checks the server capabilities.
    /// Fails if the server does not support SHA-256.
    pub fn capabilities(&self) -> Result<Capabilities> {
        self.block_on(self.capabilities_async())
    }

    pub(crate) async fn capabilities_async(&self) -> Result<Capabilities> {
        if let Some(c) = self.caps.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(c.clone());
        }
        const OP: &str = "Capabilities.GetCapabilities";
        let instance = self.instance.clone();
        let raw = self
            .unary(OP, self.opts.rpc_timeout, |ch| {
                let req = GetCapabilitiesRequest {
                    instance_name: instance.clone(),
                };
                async move { CapabilitiesClient::new(ch).get_capabilities(req).await }
            })
            .await?;
        let sha256 = digest_function::Value::Sha256 as i32;
        let cache = raw.cache_capabilities.clone().unwrap_or_default();
        // An empty list means "SHA256 only" for servers predating the field.
        if !cache.digest_functions.is_empty() && !cache.digest_functions.contains(&sha256) {
            return Err(self.bad(
                OP,
                format!(
                    "server does not offer SHA256 (digest functions {:?})",
                    cache.digest_functions
                ),
            ));
        }
        let server_batch = match cache.max_batch_total_size_bytes {
            n if n > 0 => n as usize,
            _ => 4 * 1024 * 1024 - 64 * 1024,
        };
        let max_batch_bytes = match self.opts.max_batch_bytes {
            Some(m) => m.min(server_batch),
            None => server_batch,
        };
        let exec = raw.execution_capabilities.clone().unwrap_or_default();
        let caps = Capabilities {
            max_batch_bytes,
            exec_enabled: exec.exec_enabled,
            action_cache_update_enabled: cache
                .action_cache_update_capabilities
                .as_ref()
                .map(|c| c.update_enabled)
                .unwrap_or(false),
            raw,
        };
        *self.caps.lock().unwrap_or_else(|e| e.into_inner()) = Some(caps.clone());
        Ok(caps)
    }

    /// Runs a future on the internal runtime. Must not be called from async code.
    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub(crate) fn bad(&self, op: &str, reason: impl Into<String>) -> Error {
        crate::digest::bad(&self.server, op, reason)
    }

    pub(crate) fn rpc_err(&self, op: &str, status: &tonic::Status) -> Error {
        Error::Rpc {
            server: self.server.clone(),
            op: op.to_string(),
            status: RpcStatus::from(status),
        }
    }

    pub(crate) fn timeout_err(&self, op: &str, timeout: Duration) -> Error {
        Error::Timeout {
            server: self.server.clone(),
            op: op.to_string(),
            timeout,
        }
    }

    /// One unary RPC with deadline and retries of transient failures.
    /// `f` gets a fresh channel clone for each attempt.
    pub(crate) async fn unary<T, F, Fut>(&self, op: &str, timeout: Duration, f: F) -> Result<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempt = 0;
        loop {
            let res = match tokio::time::timeout(timeout, f(self.channel.clone())).await {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => self.rpc_err(op, &status),
                Err(_) => self.timeout_err(op, timeout),
            };
            if !res.is_transient() || attempt >= self.opts.retries {
                return Err(res);
            }
            attempt += 1;
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    /// Builds a request carrying the deadline as `grpc-timeout`.
    pub(crate) fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(timeout);
        r
    }
}

/// Exponential backoff: 100 ms, 200 ms, 400 ms ... capped at 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(5))
}

/// Flattens an error and its sources into one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            endpoint_uri("grpc://127.0.0.1:1234").unwrap(),
            "http://127.0.0.1:1234"
        );
        assert_eq!(endpoint_uri("http://h:1/").unwrap(), "http://h:1");
        assert!(endpoint_uri("grpcs://h:1").is_err());
        assert!(endpoint_uri("h:1").is_err());
        assert!(endpoint_uri("grpc://h:1/x").is_err());
    }

    #[test]
    fn connect_error_names_server() {
        let opts = ClientOptions {
            connect_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        // Port 1 on loopback: nothing listens there.
        let err = Client::connect_with("grpc://127.0.0.1:1", "", opts).unwrap_err();
        assert!(err.to_string().contains("grpc://127.0.0.1:1"), "{err}");
    }
}
