//! A throw-away RabbitMQ broker (Debian's rabbitmq-server) for tests and benches: started
//! unprivileged-style on 127.0.0.1 with random ports and a node directory of its own (node
//! name, AMQP, distribution and epmd ports, mnesia, logs, config, cookie under `HOME`), its
//! own epmd in the foreground, waited for with a bounded poll, and stopped by PID. It can be
//! stopped and started again on the same ports and directory (durable queues survive), and
//! configured for TLS (`ssl_options` with `verify_peer`) with certificates made by openssl.
//!
//! `/usr/lib/rabbitmq/bin/rabbitmq-server` is run rather than `/usr/sbin/rabbitmq-server`,
//! whose wrapper switches to the `rabbitmq` user when run as root.
//!
//! Included with `#[path]` from `tests/common/mod.rs` (and benches).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::child::ChildGuard;
use super::net::try_free_port;

pub const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
pub const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
const EPMD: &str = "/usr/bin/epmd";
/// A loaded 2-core machine boots a node in 10-20 s.
const START_LIMIT: Duration = Duration::from_secs(90);
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// Why the broker cannot run here, if it cannot (tests print `SKIPPED: ...`).
pub fn missing() -> Option<String> {
    for (path, package) in [(SERVER, "rabbitmq-server"), (EPMD, "erlang-base")] {
        if !Path::new(path).exists() {
            return Some(format!("{path} is missing (apt-get install {package})"));
        }
    }
    None
}

/// TLS files made for a broker: a CA, the server's certificate and key, a client's.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Another CA that signed nothing here: trusting it must fail.
    pub other_ca: PathBuf,
}

/// Make a throw-away CA and certificates under `dir` with openssl (server for
/// `localhost`/127.0.0.1, client CN `hark-test`).
pub fn make_certs(dir: &Path) -> Result<Certs, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let p = |n: &str| dir.join(n);
    let run = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    for ca in ["ca", "other-ca"] {
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=hark test {ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ])?;
    }
    std::fs::write(
        p("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(p("client.ext"), "extendedKeyUsage=clientAuth\n").map_err(|e| e.to_string())?;
    for (who, cn) in [("server", "localhost"), ("client", "hark-test")] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{who}.rsa.key"),
            "-out",
            &format!("{who}.csr"),
        ])?;
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{who}.ext"),
            "-out",
            &format!("{who}.pem"),
        ])?;
        // PKCS#8, which rustls reads.
        run(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            &format!("{who}.rsa.key"),
            "-out",
            &format!("{who}.key"),
        ])?;
    }
    Ok(Certs {
        ca: p("ca.pem"),
        server_cert: p("server.pem"),
        server_key: p("server.key"),
        client_cert: p("client.pem"),
        client_key: p("client.key"),
        other_ca: p("other-ca.pem"),
    })
}

/// A running broker; stopped (by PID) when dropped.
pub struct Broker {
    dir: PathBuf,
    pub port: u16,
    /// The amqps listener, when made with TLS.
    pub tls_port: Option<u16>,
    dist_port: u16,
    epmd_port: u16,
    node: String,
    epmd: Option<ChildGuard>,
    server: Option<ChildGuard>,
}

impl Broker {
    /// Start a broker whose files live under `dir` (which the caller keeps).
    pub fn start(dir: &Path) -> Result<Broker, String> {
        Self::start_with(dir, None)
    }

    /// Start a broker with an amqps listener too, requiring client certificates signed by
    /// `certs.ca` (`verify_peer`, `fail_if_no_peer_cert`).
    pub fn start_with(dir: &Path, certs: Option<&Certs>) -> Result<Broker, String> {
        let port = try_free_port()?;
        let mut b = Broker {
            dir: dir.to_path_buf(),
            port,
            tls_port: None,
            dist_port: try_free_port()?,
            epmd_port: try_free_port()?,
            node: format!("hark-{port}@localhost"),
            epmd: None,
            server: None,
        };
        for sub in ["mnesia", "log", "home"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
        }
        std::fs::write(dir.join("enabled_plugins"), "[].\n").map_err(|e| e.to_string())?;
        let mut conf = format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n");
        if let Some(c) = certs {
            let tls = try_free_port()?;
            b.tls_port = Some(tls);
            conf.push_str(&format!(
                "listeners.ssl.default = 127.0.0.1:{tls}\n\
                 ssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n",
                c.ca.display(),
                c.server_cert.display(),
                c.server_key.display()
            ));
        }
        std::fs::write(dir.join("rabbitmq.conf"), conf).map_err(|e| e.to_string())?;
        b.boot()?;
        Ok(b)
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2F`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2F", self.port)
    }

    /// `amqps://guest:guest@localhost:TLS_PORT/%2F` (the server certificate is for localhost).
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port
            .map(|p| format!("amqps://guest:guest@localhost:{p}/%2F"))
    }

    fn env(&self, cmd: &mut Command) {
        let d = &self.dir;
        cmd.env("HOME", d.join("home"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"))
            .env("RABBITMQ_PID_FILE", d.join("rabbitmq.pid"))
            .env("RABBITMQ_LOGS", d.join("log").join("node.log"))
            .env_remove("RABBITMQ_CONF_ENV_FILE");
    }

    fn boot(&mut self) -> Result<(), String> {
        if self.epmd.is_none() {
            let mut epmd = Command::new(EPMD);
            epmd.args([
                "-port",
                &self.epmd_port.to_string(),
                "-address",
                "127.0.0.1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            self.epmd = Some(ChildGuard::spawn("epmd", &mut epmd)?);
        }
        let _ = std::fs::remove_file(self.dir.join("rabbitmq.pid"));
        let out = std::fs::File::create(self.dir.join("log").join("server.out"))
            .map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(SERVER);
        self.env(&mut cmd);
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let started = Instant::now();
        self.server = Some(ChildGuard::spawn("rabbitmq-server", &mut cmd)?);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                let tls_up = self
                    .tls_port
                    .is_none_or(|p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok());
                if tls_up {
                    eprintln!(
                        "[rabbitmq] {} ready on 127.0.0.1:{} after {:?}",
                        self.node,
                        self.port,
                        started.elapsed()
                    );
                    return Ok(());
                }
            }
            let exited = self.server.as_mut().and_then(|s| s.try_status());
            if let Some(status) = exited {
                return Err(format!(
                    "rabbitmq-server exited ({status}):\n{}",
                    self.log_tail()
                ));
            }
            if started.elapsed() > START_LIMIT {
                self.stop();
                return Err(format!(
                    "rabbitmq-server not listening after {START_LIMIT:?}:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of the node's output and log, for failures.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        for f in ["server.out", "node.log"] {
            let t = std::fs::read_to_string(self.dir.join("log").join(f)).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            text.push_str(&lines[lines.len().saturating_sub(30)..].join("\n"));
            text.push('\n');
        }
        text
    }

    /// The Erlang VM's PID (the wrapper script waits for it), from the PID file.
    pub fn beam_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("rabbitmq.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Stop the node: SIGTERM to the VM by PID (a clean shutdown), then the wrapper is
    /// reaped; SIGKILL if either takes longer than the limit. epmd keeps running.
    pub fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        if let Some(pid) = self.beam_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if server.wait_exit(STOP_LIMIT).is_err() {
            if let Some(pid) = self.beam_pid() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // The VM may outlive its wrapper by a moment: wait until its port is free.
        let deadline = Instant::now() + STOP_LIMIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Start again on the same ports and node directory (durable queues and persistent
    /// messages come back).
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.boot()
    }

    /// `rabbitmqctl ARGS` against this node; its stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(CTL);
        self.env(&mut cmd);
        cmd.arg("-q").args(args);
        let out = cmd.output().map_err(|e| format!("rabbitmqctl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "rabbitmqctl {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Messages ready and unacked in `queue` (`rabbitmqctl list_queues`).
    pub fn queue_depth(&self, queue: &str) -> Result<(u64, u64), String> {
        let out = self.ctl(&[
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])?;
        for line in out.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 3 && f[0] == queue {
                let n = |s: &str| s.parse::<u64>().map_err(|e| format!("{line:?}: {e}"));
                return Ok((n(f[1])?, n(f[2])?));
            }
        }
        Err(format!("no queue {queue:?} in:\n{out}"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut epmd) = self.epmd.take() {
            epmd.kill();
        }
    }
}

/// One message to publish with [`publish`].
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub headers: serde_json::Map<String, serde_json::Value>,
}

/// Longest a [`publish`] may take: a broker that is stopping or still booting can accept
/// the TCP connection and then never answer, and the caller retries.
const PUBLISH_LIMIT: Duration = Duration::from_secs(20);

/// Publish `messages` (persistent, with publisher confirms) to the broker at `url`; an
/// error (retry it) if not all are confirmed within [`PUBLISH_LIMIT`].
pub fn publish(url: &str, messages: &[Message]) -> Result<(), String> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let publishing = async {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|e| format!("connect {url}: {e}"))?;
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        for m in messages {
            let mut props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_headers(hark::sources::amqp::json_to_table(&m.headers));
            if let Some(id) = &m.message_id {
                props = props.with_message_id(id.as_str().into());
            }
            ch.basic_publish(
                m.exchange.as_str().into(),
                m.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &m.body,
                props,
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| format!("confirm: {e}"))?;
        }
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    };
    rt.block_on(async {
        tokio::time::timeout(PUBLISH_LIMIT, publishing)
            .await
            .unwrap_or_else(|_| Err(format!("not confirmed within {PUBLISH_LIMIT:?}")))
    })
}

/// Declare the durable queue `queue` and bind it with each `(exchange, routing key)`, so
/// that messages wait there for a consumer that has not started yet.
pub fn declare(url: &str, queue: &str, bindings: &[(&str, &str)]) -> Result<(), String> {
    declare_with(url, queue, bindings, &serde_json::Map::new())
}

/// [`declare`] with queue arguments (`x-max-length`, `x-overflow`, ...).
pub fn declare_with(
    url: &str,
    queue: &str,
    bindings: &[(&str, &str)],
    arguments: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    use lapin::{Connection, ConnectionProperties};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|e| format!("connect {url}: {e}"))?;
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let arguments = hark::sources::amqp::json_to_table(arguments);
        ch.queue_declare(queue.into(), durable, arguments)
            .await
            .map_err(|e| format!("declare {queue}: {e}"))?;
        for (exchange, key) in bindings {
            ch.queue_bind(
                queue.into(),
                (*exchange).into(),
                (*key).into(),
                QueueBindOptions::default(),
                Default::default(),
            )
            .await
            .map_err(|e| format!("bind {queue} to {exchange} {key}: {e}"))?;
        }
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    })
}

/// A message taken from a queue by [`take`].
#[derive(Debug, Clone)]
pub struct Taken {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub body: Vec<u8>,
    pub headers: serde_json::Value,
}

/// Take (basic.get, acked) what `queue` holds now, up to `limit` messages, in order.
pub fn take(url: &str, queue: &str, limit: usize) -> Result<Vec<Taken>, String> {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    use lapin::{Connection, ConnectionProperties};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let taking = async {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|e| format!("connect {url}: {e}"))?;
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(m) = ch
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .map_err(|e| format!("get from {queue}: {e}"))?
            else {
                break;
            };
            m.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(|e| format!("ack: {e}"))?;
            let p = &m.delivery.properties;
            out.push(Taken {
                routing_key: m.delivery.routing_key.to_string(),
                message_id: p.message_id().as_ref().map(|i| i.to_string()),
                body: m.delivery.data.clone(),
                headers: p
                    .headers()
                    .as_ref()
                    .map(hark::sources::amqp::table_to_json)
                    .unwrap_or_default(),
            });
        }
        let _ = conn.close(200, "done".into()).await;
        Ok(out)
    };
    rt.block_on(async {
        tokio::time::timeout(PUBLISH_LIMIT, taking)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "taking from {queue}: no answer within {PUBLISH_LIMIT:?}"
                ))
            })
    })
}
