//! Submissions per second over HTTPS (`POST /v1/submit`) against the ZeroMQ submit socket,
//! in the same run, to the same relay (`harness = false`): `cargo bench --bench http_submit`.
//!
//! One `hark relay` with a journal (`synchronous=FULL`, as packaged) and its HTTP API on
//! TLS (a throw-away CA and certificate made with openssl, as for the broker tests), signed Laniakea events built
//! before the clock starts. Each case runs `HARK_BENCH_CLIENTS` (8) clients at once, each
//! sending one event and waiting for its ack before the next (closed loop, as `hark
//! publish` does): HTTPS clients are reqwest with kept-alive connections, ZeroMQ clients a
//! DEALER each. Cases alternate per round; the table gives the median of
//! `HARK_BENCH_RUNS` (3) rounds of `HARK_BENCH_COUNT` (3000) events per case.
//! Nothing here asserts a speed. Knobs: those three, and `HARK_BIN`.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::net::{try_free_endpoint, try_free_port};
use support::{bench_hark_bin, bench_keys, env_num, exit_with, machine_lines, median, LoggedChild};

const TAG: &str = "_lk.bench.http";

/// Events per second for `clients` closed-loop clients sharing `frames`.
fn run_case(
    frames: &Arc<Vec<Vec<u8>>>,
    clients: usize,
    send: impl Fn(usize, &[u8]) -> Result<(), String> + Sync,
) -> Result<f64, String> {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|client| {
                let (next, send) = (&next, &send);
                scope.spawn(move || -> Result<(), String> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(frame) = frames.get(i) else {
                            return Ok(());
                        };
                        send(client, frame)?;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "a client panicked".to_string())??;
        }
        Ok::<(), String>(())
    })?;
    Ok(frames.len() as f64 / started.elapsed().as_secs_f64())
}

fn main() {
    let (runs, count, clients) = (
        env_num("HARK_BENCH_RUNS", 3),
        env_num("HARK_BENCH_COUNT", 3000),
        env_num("HARK_BENCH_CLIENTS", 8),
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| exit_with(&e.to_string()));
    let certs =
        support::rabbitmq::make_certs(&dir.path().join("tls")).unwrap_or_else(|e| exit_with(&e));
    let keys = bench_keys(dir.path()).unwrap_or_else(|e| exit_with(&e));
    let config = dir.path().join("hark.yaml");
    std::fs::write(&config, "http:\n  rate_limit: 0\n")
        .unwrap_or_else(|e| exit_with(&e.to_string()));
    let submit = try_free_endpoint().unwrap_or_else(|e| exit_with(&e));
    let port = try_free_port().unwrap_or_else(|e| exit_with(&e));
    let mut cmd = Command::new(bench_hark_bin());
    cmd.args([
        "relay",
        "--submit",
        &submit,
        "--publish",
        &try_free_endpoint().unwrap_or_default(),
    ])
    .args([
        "--replay",
        &try_free_endpoint().unwrap_or_default(),
        "--grant",
        "bench=_lk.bench.**",
    ])
    .args(["--http", &format!("127.0.0.1:{port}")])
    .arg("--config")
    .arg(&config)
    .arg("--tls-cert")
    .arg(&certs.server_cert)
    .arg("--tls-key")
    .arg(&certs.server_key)
    .arg("--journal")
    .arg(dir.path().join("journal.db"))
    .arg("--key")
    .arg(&keys.relay_key)
    .arg("--trusted")
    .arg(&keys.trusted);
    let mut relay = LoggedChild::spawn(cmd, dir.path().join("relay.log"), "hark relay")
        .unwrap_or_else(|e| exit_with(&e));
    relay
        .wait_for_output("relay ready", Duration::from_secs(30))
        .unwrap_or_else(|e| exit_with(&e));

    let ca = std::fs::read(&certs.ca).unwrap_or_default();
    let cert = reqwest::Certificate::from_pem(&ca).unwrap_or_else(|e| exit_with(&e.to_string()));
    let https: Vec<reqwest::blocking::Client> = (0..clients)
        .map(|_| {
            reqwest::blocking::Client::builder()
                .use_rustls_tls()
                .add_root_certificate(cert.clone())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_else(|e| exit_with(&e.to_string()))
        })
        .collect();
    let url = format!("https://127.0.0.1:{port}/v1/submit");
    let ctx = zmq::Context::new();
    let dealers: Vec<std::sync::Mutex<zmq::Socket>> = (0..clients)
        .map(|_| {
            let s = ctx
                .socket(zmq::DEALER)
                .unwrap_or_else(|e| exit_with(&e.to_string()));
            s.set_linger(0).ok();
            s.connect(&submit)
                .unwrap_or_else(|e| exit_with(&e.to_string()));
            std::sync::Mutex::new(s)
        })
        .collect();
    let frames = |round: usize, case: &str| -> Arc<Vec<Vec<u8>>> {
        Arc::new(
            (0..count)
                .map(|i| {
                    let data = serde_json::json!({"case": case, "round": round, "i": i, "pad": "x".repeat(300)});
                    let event = hark::bus::publish::build_event(TAG, data, &keys.publisher, None, None)
                        .unwrap_or_else(|e| exit_with(&e.to_string()));
                    hark::event::canonical::to_vec(&event).unwrap_or_default()
                })
                .collect(),
        )
    };
    let accepted = |body: &[u8]| -> Result<(), String> {
        let ack: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("ack: {e}"))?;
        if ack["status"] == "accepted" {
            Ok(())
        } else {
            Err(format!("not accepted: {ack}"))
        }
    };
    let (mut over_https, mut over_zmq) = (Vec::new(), Vec::new());
    for round in 0..runs + 1 {
        let https_frames = frames(round, "https");
        let rate = run_case(&https_frames, clients, |c, frame| {
            let response = https[c]
                .post(&url)
                .header("content-type", "application/json")
                .body(frame.to_vec())
                .send()
                .map_err(|e| e.to_string())?;
            accepted(&response.bytes().map_err(|e| e.to_string())?)
        })
        .unwrap_or_else(|e| exit_with(&e));
        let zmq_frames = frames(round, "zmq");
        let zrate = run_case(&zmq_frames, clients, |c, frame| {
            let socket = dealers[c].lock().map_err(|_| "lock".to_string())?;
            socket.send(frame, 0).map_err(|e| e.to_string())?;
            if socket
                .poll(zmq::POLLIN, 30_000)
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("no ack within 30 s".into());
            }
            accepted(&socket.recv_bytes(0).map_err(|e| e.to_string())?)
        })
        .unwrap_or_else(|e| exit_with(&e));
        // Round 0 warms up connections, the journal and the page cache.
        if round > 0 {
            eprintln!("round {round}: https {rate:.0}/s, zmq {zrate:.0}/s");
            over_https.push(rate);
            over_zmq.push(zrate);
        }
    }
    relay.terminate(Duration::from_secs(10));
    let (h, z) = (
        median(over_https).unwrap_or(0.0),
        median(over_zmq).unwrap_or(0.0),
    );
    println!("| transport ({clients} clients, ack awaited per event, journal on) | submissions/s (median of {runs}) |");
    println!("|---|---|");
    println!("| HTTPS `POST /v1/submit` (rustls, kept-alive) | {h:.0} |");
    println!("| ZeroMQ submit socket (DEALER) | {z:.0} |");
    println!(
        "| HTTPS / ZeroMQ | {:.2} |",
        if z > 0.0 { h / z } else { 0.0 }
    );
    for line in machine_lines() {
        println!("{line}");
    }
}
