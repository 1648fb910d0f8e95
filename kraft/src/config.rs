//! Every environment variable the tool reads, read once at start.
//!
//! | variable | what it does |
//! |---|---|
//! | `CI` | `true`/`1`: builds are `--locked`; no progress bar |
//! | `HOME` | `~` in Kraftfile paths; default store and cargo home |
//! | `XDG_CACHE_HOME` | default store: `$XDG_CACHE_HOME/kraft-xtask` |
//! | `CARGO_HOME` | where `cargo metadata`'s inputs live (the no-op check) |
//! | `KRAFT_STORE` | the store root |
//! | `KRAFT_MIRRORS` | `UPSTREAM_PREFIX=REPLACEMENT;…` URL rewrites |
//! | `KRAFT_ARCHIVE_DIR` | a directory of origin archives, found by file name |
//! | `KRAFT_SANDBOX` | `bwrap` (default) or `none` (explicitly unconfined) |
//! | `KRAFT_SANDBOX_PATH` | the `PATH` build commands see |
//! | `PATH` | where `doctor` looks for host programs (unless `KRAFT_SANDBOX_PATH`) |
//! | `KRAFT_REMOTE_CACHE` | the shared cache URL |
//! | `KRAFT_REMOTE_UPLOAD` | `1`: write to the shared cache (CI) |
//! | `KRAFT_CACHE_SIGNING_KEY` | CI: the shared cache's Ed25519 private key (a file, or `keyid:base64`) |
//! | `KRAFT_CACHE_TRUSTED_KEYS` | the public keys whose shared-cache entries are trusted (`keyid:base64,…`) |
//! | `KRAFT_REMOTE_CACHE_READONLY` | `1`: read the shared cache, never write |
//! | `CARGO_TARGET_DIR`, `CARGO_BUILD_TARGET_DIR`, `CARGO` | can change `cargo metadata`'s answer (the no-op check) |
//!
//! [`Config::get`] reads them the first time it is called; a program that
//! embeds the library may call [`Config::set`] first to decide them itself.

use std::ffi::OsString;
use std::sync::OnceLock;

use camino::Utf8PathBuf;

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub ci: bool,
    pub home: Option<Utf8PathBuf>,
    pub xdg_cache_home: Option<Utf8PathBuf>,
    pub cargo_home: Option<Utf8PathBuf>,
    pub store: Option<Utf8PathBuf>,
    pub mirrors: Option<String>,
    pub archive_dir: Option<Utf8PathBuf>,
    pub sandbox: Option<String>,
    pub sandbox_path: Option<String>,
    /// `KRAFT_SANDBOX_RESIDENT=0`: a sandbox per action instead of one
    /// long-lived sandbox per worker (`exec::resident`).
    pub sandbox_per_action: bool,
    /// `KRAFT_MATERIALIZE`: `needed` (the default) leaves objects restored
    /// from the cache in the store until a command needs them; `all`
    /// writes every output (`exec::in_store`).
    pub materialize: Option<String>,
    /// `PATH`, where `doctor` looks host programs up.
    pub path: Option<OsString>,
    pub remote_cache: Option<String>,
    pub remote_upload: bool,
    /// `KRAFT_CACHE_SIGNING_KEY`: a key file's path, or the key itself.
    pub cache_signing_key: Option<String>,
    /// `KRAFT_CACHE_TRUSTED_KEYS`: `keyid:base64` public keys, comma-separated.
    pub cache_trusted_keys: Option<String>,
    /// `KRAFT_REMOTE_CACHE_READONLY`: never write to the shared cache.
    pub remote_read_only: bool,
    /// The variables that can change `cargo metadata`'s answer, as read.
    pub cargo_env: Vec<(String, String)>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

impl Config {
    /// The environment, as it was when first asked.
    pub fn get() -> &'static Config {
        CONFIG.get_or_init(Config::from_env)
    }

    /// Decide the configuration instead of reading the environment. Only
    /// before the first [`Config::get`]; returns false if it was too late.
    pub fn set(config: Config) -> bool {
        CONFIG.set(config).is_ok()
    }

    pub fn from_env() -> Config {
        let text = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let path = |name: &str| text(name).map(Utf8PathBuf::from);
        let yes = |name: &str| matches!(text(name).as_deref().map(str::trim), Some("1" | "true" | "yes" | "on"));
        Config {
            ci: matches!(text("CI").as_deref(), Some("true" | "1")),
            home: path("HOME"),
            xdg_cache_home: path("XDG_CACHE_HOME"),
            cargo_home: path("CARGO_HOME"),
            store: path("KRAFT_STORE"),
            mirrors: std::env::var("KRAFT_MIRRORS").ok(),
            archive_dir: path("KRAFT_ARCHIVE_DIR"),
            sandbox: text("KRAFT_SANDBOX"),
            sandbox_path: text("KRAFT_SANDBOX_PATH"),
            sandbox_per_action: matches!(text("KRAFT_SANDBOX_RESIDENT").as_deref().map(str::trim), Some("0" | "false" | "no" | "off")),
            materialize: text("KRAFT_MATERIALIZE"),
            path: std::env::var_os("PATH"),
            remote_cache: std::env::var("KRAFT_REMOTE_CACHE").ok(),
            remote_upload: yes("KRAFT_REMOTE_UPLOAD"),
            cache_signing_key: text("KRAFT_CACHE_SIGNING_KEY"),
            cache_trusted_keys: text("KRAFT_CACHE_TRUSTED_KEYS"),
            remote_read_only: yes("KRAFT_REMOTE_CACHE_READONLY"),
            cargo_env: ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR", "CARGO_HOME", "CARGO"]
                .iter()
                .map(|name| (name.to_string(), std::env::var(name).unwrap_or_default()))
                .collect(),
        }
    }
}
