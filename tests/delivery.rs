//! No event lost: relays with journals, the trigger's catch-up through replay, and
//! restarts of either side while publishers keep publishing. Real processes on loopback,
//! bounded waits; every test counts what ran, by uuid.

mod common;

use std::time::{Duration, Instant};

use common::bus::{counts, publish_to, Bus, WAIT};
use common::{free_endpoint, hark_command, poll_until, spawn_ready, temp_dir, write_file};
use hark::bus::ack::AckStatus;
use hark::bus::publish::{build_event, submit, Target};
use hark::config::ZmqConfig;
use hark::event::keys::SigningKey;
use serde_json::json;

/// Publish `count` events from a thread, at most `rate` per second; the acked uuids.
fn publisher(
    targets: Vec<Target>,
    key: SigningKey,
    count: usize,
    rate: u32,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut acked = Vec::new();
        for n in 0..count {
            let due = started + Duration::from_secs_f64(n as f64 / f64::from(rate));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if let Some(uuid) = publish_to(&targets, &key, json!({"n": n})) {
                acked.push(uuid);
            }
        }
        acked
    })
}

/// Events published before the daemon's subscription is live are caught up anyway, so
/// the first wait is for the first event to run, not for a warm-up.
fn wait_running(bus: &Bus) {
    let uuid = bus.publish(usize::MAX).expect("a relay acks");
    bus.wait_all_ran(&[uuid]);
}

#[test]
fn events_published_while_the_trigger_is_down_run_after_it_comes_back_in_order() {
    let mut bus = Bus::new(1);
    bus.start_trigger();
    wait_running(&bus);
    bus.kill_trigger();
    // Down for 10 s, while 200 events are published.
    let published = publisher(bus.targets(), bus.key.clone(), 200, 20)
        .join()
        .unwrap();
    assert_eq!(published.len(), 200);
    bus.start_trigger();
    let counts = bus.wait_all_ran(&published);
    assert!(published.iter().all(|u| counts[u] == 1), "each ran once");
    let ran: Vec<String> = bus
        .ran()
        .into_iter()
        .filter(|u| published.contains(u))
        .collect();
    assert_eq!(ran, published, "in publish order");
}

#[test]
fn events_fetched_after_a_downtime_longer_than_max_age_still_run() {
    let mut bus = Bus::new(1);
    // Live events older than 2 s are refused as stale; the daemon is down for longer.
    bus.trigger_yaml = "trust:\n  max_age: 2s\n".into();
    bus.start_trigger();
    wait_running(&bus);
    bus.kill_trigger();
    let published: Vec<String> = (0..20).map(|n| bus.publish(n).expect("acked")).collect();
    std::thread::sleep(Duration::from_secs(3));
    bus.start_trigger();
    let counts = bus.wait_all_ran(&published);
    assert!(published.iter().all(|u| counts[u] == 1), "each ran once");
}

#[test]
fn a_restarted_relay_keeps_its_seqs_and_knows_what_it_published() {
    let mut bus = Bus::new(1);
    let event = build_event("_lk.test.delivery", json!({}), &bus.key, None, None).unwrap();
    let zmq = ZmqConfig::default();
    let first = submit(&bus.relays[0].submit, &event, WAIT, &zmq).unwrap();
    assert_eq!((first.status, first.seq), (AckStatus::Accepted, Some(1)));
    bus.kill_relay(0);
    bus.start_relay(0);
    // The ack was lost in the crash, say, and the publisher sends the event again.
    let again = submit(&bus.relays[0].submit, &event, WAIT, &zmq).unwrap();
    assert_eq!(again.status, AckStatus::Duplicate, "{again:?}");
    let next = build_event("_lk.test.delivery", json!({}), &bus.key, None, None).unwrap();
    let ack = submit(&bus.relays[0].submit, &next, WAIT, &zmq).unwrap();
    assert_eq!(ack.seq, Some(2), "seqs go on across the restart");
}

#[test]
fn a_relay_killed_mid_stream_loses_nothing_that_was_acked() {
    let mut bus = Bus::new(1);
    bus.start_trigger();
    wait_running(&bus);
    let stream = publisher(bus.targets(), bus.key.clone(), 2000, 200);
    // Kill the relay while the stream is under way (after ~500 acks), back after 2 s.
    poll_until(WAIT, || (bus.ran().len() > 500).then_some(())).expect("the stream flows");
    bus.kill_relay(0);
    std::thread::sleep(Duration::from_secs(2));
    bus.start_relay(0);
    let acked = stream.join().unwrap();
    assert!(
        acked.len() > 1900,
        "publishers resend until the relay is back: {}",
        acked.len()
    );
    let counts = bus.wait_all_ran(&acked);
    let twice: Vec<_> = acked.iter().filter(|u| counts[*u] > 1).collect();
    assert!(
        twice.is_empty(),
        "{} ran more than once: {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
}

#[test]
fn a_trigger_killed_twice_mid_stream_runs_every_event() {
    let mut bus = Bus::new(1);
    bus.start_trigger();
    wait_running(&bus);
    let stream = publisher(bus.targets(), bus.key.clone(), 1000, 200);
    for at in [250, 600] {
        poll_until(WAIT, || (bus.ran().len() > at).then_some(())).expect("the stream flows");
        bus.kill_trigger();
        bus.start_trigger();
    }
    let acked = stream.join().unwrap();
    assert_eq!(acked.len(), 1000, "the relay stayed up");
    let counts = bus.wait_all_ran(&acked);
    // A job running at a kill runs again after the restart (documented): at most one per
    // kill with the rule's limit of 1. Nothing else may run twice.
    let again = acked.iter().filter(|u| counts[*u] > 1).count();
    assert!(again <= 2, "{again} events ran twice after two kills");
}

#[test]
fn with_two_relays_one_killed_for_good_every_event_runs_once() {
    let mut bus = Bus::new(2);
    bus.start_trigger();
    wait_running(&bus);
    // After the kill every event waits a moment for the dead relay's ack, so the stream is
    // short.
    let stream = publisher(bus.targets(), bus.key.clone(), 200, 200);
    poll_until(WAIT, || (bus.ran().len() > 100).then_some(())).expect("the stream flows");
    bus.kill_relay(1);
    let acked = stream.join().unwrap();
    assert_eq!(acked.len(), 200, "the other relay acks every event");
    let counts = bus.wait_all_ran(&acked);
    assert!(acked.iter().all(|u| counts[u] == 1), "each ran once");
}

#[test]
fn a_gap_beyond_retention_is_reported_as_unrecoverable() {
    // A journal that keeps a dozen events or so.
    let mut bus = Bus::new(1);
    let config = write_file(
        bus.dir.path(),
        "relay.yaml",
        "relay:\n  journal_max_bytes: 12000\n",
    );
    bus.kill_relay(0);
    bus.relays[0].extra = vec!["--config".into(), config.display().to_string()];
    bus.start_relay(0);
    bus.start_trigger();
    wait_running(&bus);
    bus.kill_trigger();
    let published: Vec<String> = (0..60).map(|n| bus.publish(n).expect("acked")).collect();
    bus.start_trigger();
    let trigger = bus.trigger.as_ref().unwrap();
    let line = trigger
        .stderr
        .wait_for("lost for good", WAIT)
        .expect("the unrecoverable gap is reported");
    // seq 1 ran before the daemon went down; the oldest of the 60 are pruned.
    assert!(line.contains("seq 2..="), "names the seq range: {line}");
    // The admin sees it in hark jobs.
    let state = bus.dir.path().join("state.db");
    let row = poll_until(WAIT, || {
        let out = hark_command()
            .args(["jobs", "gaps", "--json", "--state"])
            .arg(&state)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().next()?.to_string();
        serde_json::from_str::<serde_json::Value>(&line).ok()
    })
    .expect("hark jobs gaps lists the lost range");
    assert_eq!(
        (row["relay"].as_str(), row["first"].as_u64()),
        (Some("r0"), Some(2)),
        "{row}"
    );
    // What the journal still has runs.
    let last = published.last().unwrap().clone();
    bus.wait_all_ran(&[last]);
    let ran = counts(&bus.ran());
    assert!(published.iter().filter(|u| ran.contains_key(*u)).count() < published.len());
}

#[test]
fn a_full_journal_disk_refuses_submissions_and_recovers() {
    // The mount is declared after the bus so that it goes first: the bus's
    // temporary directory cannot be removed while a file system is mounted in it.
    let mut bus = Bus::new(1);
    let mnt = bus.dir.path().join("full");
    let Some(_mount) = common::Tmpfs::mount(&mnt, "2m") else {
        println!("SKIPPED: needs root to mount a tmpfs");
        return;
    };
    bus.kill_relay(0);
    bus.relays[0].journal = mnt.join("journal.db");
    bus.start_relay(0);
    assert!(
        bus.publish(0).is_some(),
        "publishing works before the disk fills"
    );
    let filler = mnt.join("filler");
    common::fill_disk(&filler);
    let key = bus.dir.path().join("trusted/archive.key_secret");
    let out = hark_command()
        .args([
            "publish",
            "--no-spool",
            "--timeout",
            "5s",
            "--relay",
            &bus.relays[0].submit,
        ])
        .arg("--key")
        .arg(&key)
        .args(["_lk.test.delivery", "--data", "{}"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("journal-unavailable"), "{err}");
    std::fs::remove_file(&filler).unwrap();
    assert!(
        poll_until(WAIT, || bus.publish(1)).is_some(),
        "the relay takes events again once there is space"
    );
}

#[test]
fn a_relay_that_stops_sending_heartbeats_is_reported_and_its_return_too() {
    let mut bus = Bus::new(1);
    let config = write_file(bus.dir.path(), "relay.yaml", "relay:\n  heartbeat: 200ms\n");
    bus.kill_relay(0);
    bus.relays[0].extra = vec!["--config".into(), config.display().to_string()];
    bus.start_relay(0);
    bus.start_trigger();
    wait_running(&bus);
    let trigger = bus.trigger.as_ref().unwrap();
    trigger
        .stderr
        .wait_for("first heartbeat from relay r0", WAIT)
        .expect("the daemon hears heartbeats");
    bus.kill_relay(0);
    let line = bus
        .trigger
        .as_ref()
        .unwrap()
        .stderr
        .wait_for("sent no heartbeat", WAIT)
        .expect("a silent relay is reported");
    assert!(line.contains("relay r0"), "{line}");
    bus.start_relay(0);
    bus.trigger
        .as_ref()
        .unwrap()
        .stderr
        .wait_for("sends heartbeats again", WAIT)
        .expect("its return is reported");
}

#[test]
fn a_trigger_whose_relays_never_answer_says_so() {
    let dir = temp_dir();
    let nobody = free_endpoint();
    let trigger = spawn_ready(
        "trigger",
        hark_command()
            .args(["trigger", "--connect", &nobody])
            .arg("--rules")
            .arg(dir.path().join("rules.d"))
            .arg("--state")
            .arg(dir.path().join("state.db"))
            .arg("--config")
            .arg(write_file(dir.path(), "hark.yaml", "")),
        "trigger ready",
    );
    let line = trigger
        .stderr
        .wait_for("no relay has answered", WAIT)
        .expect("the silence is reported");
    assert!(line.contains(&nobody), "names the endpoint: {line}");
}

#[test]
fn hark_tail_shows_every_acked_event_once_across_a_relay_restart() {
    let mut bus = Bus::new(1);
    let (publish, replay) = (bus.relays[0].publish.clone(), bus.relays[0].replay.clone());
    let tail = common::Proc::spawn(
        "tail",
        hark_command()
            .args(["tail", "--json", "--connect", &publish, "--replay", &replay])
            .arg("--trusted")
            .arg(&bus.trusted)
            .arg("--config")
            .arg(write_file(bus.dir.path(), "tail.yaml", "")),
    );
    let shown = |uuid: &str| {
        tail.stdout
            .history()
            .iter()
            .filter(|l| l.contains(uuid))
            .count()
    };
    // Until its subscription is live, what tail misses is not news to it.
    poll_until(WAIT, || {
        let uuid = bus.publish(usize::MAX)?;
        std::thread::sleep(Duration::from_millis(200));
        (shown(&uuid) > 0).then_some(())
    })
    .expect("tail shows events");
    let stream = publisher(bus.targets(), bus.key.clone(), 1000, 200);
    poll_until(WAIT, || (tail.stdout.history().len() > 300).then_some(())).expect("flowing");
    bus.kill_relay(0);
    std::thread::sleep(Duration::from_secs(2));
    bus.start_relay(0);
    let acked = stream.join().unwrap();
    assert!(acked.len() > 900, "acked {}", acked.len());
    let missing = || acked.iter().filter(|u| shown(u) == 0).count();
    poll_until(WAIT, || (missing() == 0).then_some(()))
        .unwrap_or_else(|| panic!("{} of {} acked events never shown", missing(), acked.len()));
    let twice = acked.iter().filter(|u| shown(u) > 1).count();
    assert_eq!(twice, 0, "shown once each");
}
