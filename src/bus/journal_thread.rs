//! The relay's journal thread: it owns the journal and the replay socket.
//!
//! The socket thread stages what one poll round released and hands the round over; this
//! thread appends it in one transaction (one fsync) and hands it back to be published and
//! acked. While it waits for the disk, the socket thread goes on receiving and verifying,
//! so an fsync costs each event latency, not the relay throughput. The rounds that queued
//! up meanwhile go to disk together (one transaction, one fsync), in the order they were
//! handed over. A round whose first seq does not follow the journal's head (an earlier
//! round failed) is refused: the seqs stamped into its events would not be the seqs it
//! was journaled under.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crossbeam_channel::{unbounded, Receiver, Sender, TryRecvError};
use tracing::warn;

use crate::event::Frame;
use crate::journal::replay;
use crate::journal::{Journal, NewEntry};
use crate::metrics::Registry;

const BELL: &str = "inproc://hark-relay-journal";
/// How often retention is enforced besides after an append that went over `max_bytes`.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Replay requests answered per wake-up, so that appends are never kept waiting long.
const REPLAY_REQUESTS_PER_ROUND: usize = 16;

/// What the journal needs of a staged event.
pub trait Journaled: Send + 'static {
    type Frame: Frame;
    fn entry(&self) -> NewEntry<'_, Self::Frame>;
}

/// One poll round's events, stamped with consecutive seqs from `first_seq`.
pub struct Round<T> {
    pub first_seq: u64,
    /// Which run of contiguous seqs the socket thread staged it in; a failed round starts
    /// a new one.
    pub generation: u64,
    pub events: Vec<T>,
}

/// A round back from the journal: `Ok` once it is on disk, else why not.
pub struct Written<T> {
    pub round: Round<T>,
    pub result: Result<(), String>,
}

/// The socket thread's handle on the journal thread.
pub struct JournalThread<T> {
    rounds: Option<Sender<Round<T>>>,
    bell: zmq::Socket,
    written: Receiver<Written<T>>,
    handle: Option<JoinHandle<()>>,
}

impl<T: Journaled> JournalThread<T> {
    /// Start the thread with `journal` and the bound `replay` ROUTER, if any. It rings
    /// `doorbell` (an inproc PULL the socket thread polls) whenever a round is written.
    pub fn start(
        ctx: &zmq::Context,
        journal: Journal,
        replay: Option<zmq::Socket>,
        doorbell: &str,
        metrics: Registry,
    ) -> anyhow::Result<JournalThread<T>> {
        let inbox = ctx.socket(zmq::PULL).context("creating the journal bell")?;
        inbox.bind(BELL).context("binding the journal bell")?;
        let wake = ctx
            .socket(zmq::PUSH)
            .context("creating the relay doorbell")?;
        wake.connect(doorbell)
            .context("connecting to the relay doorbell")?;
        let bell = ctx.socket(zmq::PUSH).context("creating the journal bell")?;
        bell.connect(BELL)
            .context("connecting to the journal bell")?;
        let (rounds_tx, rounds_rx) = unbounded();
        let (written_tx, written_rx) = unbounded();
        let mut writer = Writer {
            journal,
            replay,
            inbox,
            wake,
            metrics,
            last_prune: Instant::now(),
        };
        let handle = std::thread::Builder::new()
            .name("relay-journal".into())
            .spawn(move || writer.run(&rounds_rx, &written_tx))
            .context("starting the relay journal thread")?;
        Ok(JournalThread {
            rounds: Some(rounds_tx),
            bell,
            written: written_rx,
            handle: Some(handle),
        })
    }

    /// Hand a round over to be journaled.
    pub fn append(&self, round: Round<T>) -> Result<(), Round<T>> {
        let Some(rounds) = &self.rounds else {
            return Err(round);
        };
        rounds.send(round).map_err(|e| e.into_inner())?;
        // A full bell means the thread already has a wake-up pending.
        let _ = self.bell.send(&b""[..], zmq::DONTWAIT);
        Ok(())
    }

    /// Rounds written (or refused) since the last call, in the order handed over.
    pub fn written(&self) -> impl Iterator<Item = Written<T>> + '_ {
        self.written.try_iter()
    }

    /// Stop the thread once it has journaled every round handed over; those rounds.
    pub fn finish(mut self) -> Vec<Written<T>> {
        self.rounds = None;
        let _ = self.bell.send(&b""[..], zmq::DONTWAIT);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.written.try_iter().collect()
    }
}

struct Writer {
    journal: Journal,
    replay: Option<zmq::Socket>,
    inbox: zmq::Socket,
    wake: zmq::Socket,
    metrics: Registry,
    last_prune: Instant,
}

impl Writer {
    fn run<T: Journaled>(&mut self, rounds: &Receiver<Round<T>>, written: &Sender<Written<T>>) {
        loop {
            let replay_ready = {
                let mut items = vec![self.inbox.as_poll_item(zmq::POLLIN)];
                if let Some(socket) = &self.replay {
                    items.push(socket.as_poll_item(zmq::POLLIN));
                }
                match zmq::poll(&mut items, 1000) {
                    Ok(_) | Err(zmq::Error::EINTR) => {}
                    Err(e) => {
                        warn!("the relay journal thread cannot poll: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                items.get(1).is_some_and(|i| i.is_readable())
            };
            while self.inbox.recv_bytes(zmq::DONTWAIT).is_ok() {}
            let mut queued = Vec::new();
            let closed = loop {
                match rounds.try_recv() {
                    Ok(round) => queued.push(round),
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            if !queued.is_empty() {
                for w in self.append(queued) {
                    if written.send(w).is_err() {
                        return;
                    }
                }
                let _ = self.wake.send(&b""[..], zmq::DONTWAIT);
            }
            if closed {
                return;
            }
            if replay_ready {
                self.answer_replays();
            }
            if self.last_prune.elapsed() > PRUNE_EVERY {
                self.prune();
            }
        }
    }

    /// Append every round that follows on the journal's head in one transaction; the
    /// rounds back in the order given, each with its outcome.
    fn append<T: Journaled>(&mut self, rounds: Vec<Round<T>>) -> Vec<Written<T>> {
        let mut next = self.journal.next_seq();
        let follows: Vec<bool> = rounds
            .iter()
            .map(|r| {
                let ok = r.first_seq == next;
                if ok {
                    next += r.events.len() as u64;
                }
                ok
            })
            .collect();
        let entries: Vec<NewEntry<'_, T::Frame>> = rounds
            .iter()
            .zip(&follows)
            .filter(|(_, ok)| **ok)
            .flat_map(|(r, _)| r.events.iter().map(Journaled::entry))
            .collect();
        let result = match self.journal.append_batch(&entries) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.metrics.inc("hark_relay_journal_errors_total", &[]);
                Err(e.to_string())
            }
        };
        drop(entries);
        if result.is_ok() && self.journal.stored_bytes() > self.journal.retention().max_bytes {
            self.prune();
        }
        rounds
            .into_iter()
            .zip(follows)
            .map(|(round, ok)| Written {
                round,
                result: if ok {
                    result.clone()
                } else {
                    Err("an earlier write to the journal failed".into())
                },
            })
            .collect()
    }

    /// Answer what the replay socket has queued, from the journal (bounded per round).
    fn answer_replays(&mut self) {
        let Some(socket) = &self.replay else { return };
        for _ in 0..REPLAY_REQUESTS_PER_ROUND {
            let Ok(request) = socket.recv_multipart(zmq::DONTWAIT) else {
                return;
            };
            self.metrics.inc("hark_relay_replay_requests_total", &[]);
            for message in replay::serve(&self.journal, &request) {
                if let Err(e) = socket.send_multipart(message, zmq::DONTWAIT) {
                    warn!("cannot answer a replay request: {e}");
                    break;
                }
            }
        }
    }

    /// Drop journal rows beyond retention, a bounded batch at a time.
    fn prune(&mut self) {
        self.last_prune = Instant::now();
        prune(&mut self.journal);
    }
}

/// Drop journal rows beyond retention, at most ten bounded batches.
pub fn prune(journal: &mut Journal) {
    for _ in 0..10 {
        match journal.prune(chrono::Utc::now().timestamp_millis()) {
            Ok(p) if p.more => continue,
            Ok(_) => return,
            Err(e) => {
                warn!("cannot prune the journal: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Retention;

    struct Staged {
        frames: Vec<Vec<u8>>,
        uuid: String,
    }

    impl Journaled for Staged {
        type Frame = Vec<u8>;
        fn entry(&self) -> NewEntry<'_> {
            NewEntry {
                frames: &self.frames,
                topic: "t",
                uuid: &self.uuid,
                received_ms: 0,
            }
        }
    }

    fn round(first_seq: u64, generation: u64, n: u64) -> Round<Staged> {
        let events = (first_seq..first_seq + n)
            .map(|seq| Staged {
                frames: vec![b"t".to_vec(), format!("{{\"seq\":{seq}}}").into_bytes()],
                uuid: format!("u{seq}"),
            })
            .collect();
        Round {
            first_seq,
            generation,
            events,
        }
    }

    #[test]
    fn rounds_come_back_in_order_and_one_that_does_not_follow_the_head_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal.db");
        let journal = Journal::open(&path, Retention::default()).expect("journal");
        let ctx = zmq::Context::new();
        let doorbell = ctx.socket(zmq::PULL).expect("doorbell");
        doorbell.bind("inproc://test-doorbell").expect("bind");
        let thread = JournalThread::start(
            &ctx,
            journal,
            None,
            "inproc://test-doorbell",
            Registry::default(),
        )
        .expect("start");
        // Seqs 1-3 and 4-5 follow on; 10 was staged after a failure that never happened
        // here, so it must not be written; 6 follows on again.
        for r in [
            round(1, 0, 3),
            round(4, 0, 2),
            round(10, 0, 1),
            round(6, 1, 1),
        ] {
            assert!(thread.append(r).is_ok());
        }
        let mut back = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while back.len() < 4 && Instant::now() < deadline {
            back.extend(thread.written());
            std::thread::sleep(Duration::from_millis(5));
        }
        let got: Vec<(u64, bool)> = back
            .iter()
            .map(|w| (w.round.first_seq, w.result.is_ok()))
            .collect();
        assert_eq!(got, [(1, true), (4, true), (10, false), (6, true)]);
        assert!(thread.finish().is_empty(), "nothing was left in flight");
        let reader = Journal::open_read_only(&path).expect("reader");
        assert_eq!(reader.head_seq().expect("head"), 6);
        let seqs: Vec<u64> = reader
            .range(1, 100)
            .expect("range")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    }
}
