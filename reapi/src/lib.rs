//! `kraft-reapi`: the Bazel Remote Execution API v2 layer of kraft-xtask.
//!
//! * [`Client`] — blocking REAPI client (CAS, ByteStream, ActionCache,
//!   Execution) that owns its own tokio runtime, for use from a synchronous
//!   thread-pool build engine.
//! * [`merkle`] — canonical `Directory` trees for input roots.
//! * [`action`] — `Command` / `Action` builders with canonical ordering.
//! * [`worker`] — a Remote Workers API (`google.devtools.remoteworkers.v1test2`
//!   Bots service) worker loop, as used by BuildGrid, that materialises
//!   inputs, runs a caller-supplied executor and uploads outputs.
//!
//! Protobuf types come from the `bazel-remote-apis` crate (REAPI v2,
//! ByteStream, longrunning) and `googleapis-tonic-google-devtools-remoteworkers-v1test2`
//! (Bots); both are re-exported under [`proto`].

pub mod action;
pub mod client;
pub mod digest;
pub mod error;
pub mod merkle;
pub mod worker;

/// The protobuf runtime the messages implement (to encode `Any` payloads).
pub use prost;

pub use action::{ActionBuilder, CommandBuilder, PreparedAction};
pub use client::{Capabilities, Client, ClientOptions, ExecuteOutcome};
pub use digest::{digest_of, Blob};
pub use error::{Error, Result, RpcStatus};
/// gRPC status codes, as [`Error::rpc_code`] gives them.
pub use tonic::Code;
pub use merkle::{InputFile, InputSymlink, MerkleTree};
pub use worker::{run_worker, ProducedFile, WorkRequest, WorkResult, WorkerConfig};

/// Re-exported protobuf modules.
pub mod proto {
    /// `build.bazel.remote.execution.v2` messages and clients.
    pub use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
    /// `google.bytestream`.
    pub use bazel_remote_apis::google::bytestream;
    /// `google.protobuf` well-known types as the REAPI messages use them (`Any`).
    pub use bazel_remote_apis::google::protobuf;
    /// `google.longrunning`.
    pub use bazel_remote_apis::google::longrunning;
    /// `google.devtools.remoteworkers.v1test2` (Bots service).
    pub use googleapis_tonic_google_devtools_remoteworkers_v1test2::google::devtools::remoteworkers::v1test2 as remoteworkers;
}
