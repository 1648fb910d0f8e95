//! Every command and flag, in one place.

use camino::Utf8PathBuf;
use clap::{Args, Parser, Subcommand};

use kraft::output::MessageFormat;
use kraft::session::Options;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Content-addressed builds of Unikraft unikernels", version)]
pub struct Flags {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone, Default)]
pub struct Global {
    /// Fail if kraft.lock is missing or would change (default under CI=true).
    #[arg(long, global = true)]
    pub locked: bool,
    /// `--locked` plus `--offline`.
    #[arg(long, global = true)]
    pub frozen: bool,
    /// Use only the store and local mirrors; never the network.
    #[arg(long, global = true)]
    pub offline: bool,
    /// The content-addressed store [default: $KRAFT_STORE, else $XDG_CACHE_HOME/kraft-xtask].
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<Utf8PathBuf>,
    /// Read this Kraftfile instead of looking one up in the app directory.
    #[arg(short = 'K', long, global = true, value_name = "FILE")]
    pub kraftfile: Option<Utf8PathBuf>,
    /// `human` (plain lines) or `json` (one object per event).
    #[arg(long, global = true, value_parser = parse_message_format, default_value = "human")]
    pub message_format: MessageFormat,
    /// Shared cache speaking bazel-remote's HTTP protocol [default: $KRAFT_REMOTE_CACHE,
    /// else `remote-cache` in [workspace.metadata.kraft]]. Reads with KRAFT_CACHE_TRUSTED_KEYS, writes with KRAFT_CACHE_SIGNING_KEY.
    #[arg(long, global = true, value_name = "URL")]
    pub remote_cache: Option<String>,
    /// Parallel jobs [default: number of cores]. With --remote-exec it may
    /// exceed the cores (local fallback runs stay within them).
    #[arg(short = 'j', long, global = true)]
    pub jobs: Option<usize>,
    /// Execute actions on this REAPI engine (`grpc://HOST:PORT[/INSTANCE]`);
    /// its action cache is the shared cache. Reads entries signed by
    /// KRAFT_CACHE_TRUSTED_KEYS.
    #[arg(long, global = true, value_name = "URL")]
    pub remote_exec: Option<String>,
    /// Publish results to the shared cache, signed with
    /// KRAFT_CACHE_SIGNING_KEY (CI) [default: $KRAFT_REMOTE_UPLOAD].
    #[arg(long, global = true)]
    pub remote_upload: bool,
}

impl Global {
    /// The library's view of these flags.
    pub fn options(&self) -> Options {
        Options {
            locked: self.locked,
            frozen: self.frozen,
            offline: self.offline,
            store: self.store.clone(),
            kraftfile: self.kraftfile.clone(),
            message_format: self.message_format,
            remote_cache: self.remote_cache.clone(),
            jobs: self.jobs,
            remote_exec: self.remote_exec.clone(),
            remote_upload: self.remote_upload,
        }
    }
}

fn parse_message_format(text: &str) -> Result<MessageFormat, String> {
    match text {
        "human" => Ok(MessageFormat::Human),
        "json" => Ok(MessageFormat::Json),
        other => Err(format!("`{other}` is not a message format; use `human` or `json`")),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Resolve the app's components and write kraft.lock.
    Lock(AppArgs),
    /// Move components to the newest commit their version names.
    Update(UpdateArgs),
    /// Lock, then bring every locked source and archive into the store, verified.
    Fetch(AppArgs),
    /// Build the app's image for each target.
    Build(BuildArgs),
    /// Build, then boot the image in QEMU.
    Run(RunArgs),
    /// Print the build graph.
    Graph(GraphArgs),
    /// Say why each action of the last build ran.
    Explain(ExplainArgs),
    /// Inspect and maintain the store.
    Cache(CacheArgs),
    /// Build a standalone sysroot (upstream musl) through the engine.
    Sysroot(SysrootArgs),
    /// Time our builds against make on the same trees (see `commands::bench`).
    Bench(BenchArgs),
    /// Mutate a copy of the app one input at a time; check every incremental
    /// build against a clean one (`exact: N/N, needless: K`).
    CheckExact(CheckExactArgs),
    /// Check the host programs a build and a run need; say how to install what is missing.
    Doctor(DoctorArgs),
    /// Run actions for a REAPI engine that schedules through the Remote
    /// Workers API (BuildGrid); `-j N` actions at a time.
    Worker(WorkerArgs),
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The engine, `grpc://HOST:PORT[/INSTANCE]`.
    #[arg(long, value_name = "URL")]
    pub engine: String,
    /// Where input blobs are cached [default: <store>/worker].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<Utf8PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckExactArgs {
    pub app: String,
    /// Only this target (`qemu/x86_64`); needed when the app has several.
    #[arg(short, long)]
    pub target: Option<String>,
    /// Only these mutation groups (comma-separated): source, header, kconfig,
    /// makefile, recipe, toolchain, env, component, origin, checkout, store, target;
    /// or mutations by the start of their name (`source: new global`); run in this order.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Keep the scratch directory (target/kraft/check-exact/<app>) afterwards.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The app whose targets to check [default: qemu/x86_64 and qemu/arm64].
    pub app: Option<String>,
    /// Only this target (`qemu/arm64`).
    #[arg(short, long)]
    pub target: Option<String>,
}

#[derive(Debug, Args)]
pub struct SysrootArgs {
    /// The component: `musl` (recipe `musl-upstream`).
    pub component: String,
    /// Build this source tree instead of the recipe's release tarball.
    #[arg(long, value_name = "DIR")]
    pub source: Option<Utf8PathBuf>,
    /// Where the sysroot goes [default: target/kraft/musl/sysroot].
    #[arg(long, value_name = "DIR")]
    pub out: Option<Utf8PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Runs per scenario (ours and baseline alternately).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Only scenarios whose name contains this, or one of these comma-separated strings (`musl/`, `uk/no-op,uk/edit`); a trailing `$` matches the whole name (`uk/remote-warm$`).
    #[arg(long)]
    pub filter: Option<String>,
}

#[derive(Debug, Args)]
pub struct AppArgs {
    /// App name (under the workspace's apps directory) or a directory holding a Kraftfile.
    pub app: String,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub app: String,
    /// Only these components; the others stay byte-identical in the lock.
    pub components: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    pub app: String,
    /// Only this target (`qemu/x86_64`); default: every target.
    #[arg(short, long)]
    pub target: Option<String>,
    /// Build twice from scratch, into separate stores and target dirs, and
    /// compare the images and `.dbg` files byte for byte.
    #[arg(long)]
    pub check_repro: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    pub app: String,
    #[arg(short, long)]
    pub target: Option<String>,
    /// Memory for the guest, in MiB.
    #[arg(long, default_value_t = 64)]
    pub memory: u32,
    /// Stop QEMU after this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    /// QEMU acceleration: `auto` (KVM when usable, TCG when KVM is missing
    /// or fails to run the guest), `kvm` or `tcg`.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    pub app: String,
    #[arg(short, long)]
    pub target: Option<String>,
    #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
    pub format: GraphFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum GraphFormat {
    Text,
    Dot,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    pub app: String,
    /// An action name (`libgreet/src/a/hello.o`) or a unit (`libgreet/src/a`).
    pub what: Option<String>,
    #[arg(short, long)]
    pub target: Option<String>,
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Sizes and counts of what the store holds.
    Stats,
    /// Rehash the store; report and remove corrupt entries.
    Verify,
    /// Remove what recent locks and recent builds do not need.
    Gc(GcArgs),
    /// Print a new Ed25519 key pair for the shared cache: the private key for
    /// CI (KRAFT_CACHE_SIGNING_KEY), the public key for every client
    /// (KRAFT_CACHE_TRUSTED_KEYS).
    Keygen(KeygenArgs),
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The key id entries signed with it carry (`ci-2026`); default: derived from the public key.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// kraft.lock files whose sources to keep (besides those under the apps directory).
    #[arg(long = "lock", value_name = "FILE")]
    pub locks: Vec<Utf8PathBuf>,
    /// Then evict least recently used action-cache entries down to this size (`500MiB`, `2GiB`, bytes).
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<String>,
    /// Keep action-cache entries used within this many days.
    #[arg(long, default_value_t = 30)]
    pub max_age_days: u64,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}
