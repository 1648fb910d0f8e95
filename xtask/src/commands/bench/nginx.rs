//! A team cache for `uk/remote-warm`: nginx on loopback with WebDAV `PUT`
//! under `/ac/` and `/cas/` (the layout of bazel-remote's HTTP protocol),
//! logging the bytes of every request so the bench can say what crossed
//! the wire. `master_process off`: killing the one child stops it.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

const NGINX: &str = "/usr/sbin/nginx";

/// Bytes that crossed the wire, from nginx's access log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Request bodies and headers received (uploads).
    pub uploaded: u64,
    /// Response bytes sent (downloads).
    pub downloaded: u64,
}

impl Traffic {
    pub fn minus(self, earlier: Traffic) -> Traffic {
        Traffic { uploaded: self.uploaded - earlier.uploaded, downloaded: self.downloaded - earlier.downloaded }
    }
}

/// The server; stopped on drop.
pub struct Nginx {
    base: Utf8PathBuf,
    child: Child,
    port: u16,
}

impl Nginx {
    /// Start nginx with its root, temp dirs and logs under `base` (replaced).
    pub fn start(base: &Utf8Path) -> Result<Nginx> {
        if !Utf8Path::new(NGINX).exists() {
            bail!("uk/remote-warm needs {NGINX} (apt-get install nginx-light)");
        }
        if base.exists() {
            std::fs::remove_dir_all(base).with_context(|| format!("removing {base}"))?;
        }
        for sub in ["root/ac", "root/cas", "body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"] {
            std::fs::create_dir_all(base.join(sub)).with_context(|| format!("creating {base}/{sub}"))?;
        }
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let conf = base.join("nginx.conf");
            std::fs::write(&conf, config(base, port)).with_context(|| format!("writing {conf}"))?;
            let mut child = Command::new(NGINX)
                .args(["-p", base.as_str(), "-c", conf.as_str(), "-e", base.join("logs/error.log").as_str()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {NGINX}"))?;
            for _ in 0..200 {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Nginx { base: base.to_owned(), child, port });
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken or a configuration problem: error.log says
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        bail!("nginx did not start: {}", std::fs::read_to_string(base.join("logs/error.log")).unwrap_or_default())
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Totals since the start, from the access log
    /// (`method status request_length bytes_sent`).
    pub fn traffic(&self) -> Traffic {
        let log = std::fs::read_to_string(self.base.join("logs/access.log")).unwrap_or_default();
        let mut t = Traffic::default();
        for line in log.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [method, _status, received, sent] = fields[..] {
                let (received, sent) = (received.parse::<u64>().unwrap_or(0), sent.parse::<u64>().unwrap_or(0));
                if method == "PUT" {
                    t.uploaded += received;
                } else {
                    t.downloaded += sent;
                }
            }
        }
        t
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(base: &Utf8Path, port: u16) -> String {
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    log_format kraft '$request_method $status $request_length $bytes_sent';
    access_log {base}/logs/access.log kraft;
    client_body_temp_path {base}/body;
    proxy_temp_path {base}/proxy;
    fastcgi_temp_path {base}/fastcgi;
    uwsgi_temp_path {base}/uwsgi;
    scgi_temp_path {base}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {base}/root;
        location / {{
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 0;
        }}
    }}
}}
"#
    )
}
