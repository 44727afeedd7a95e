//! The node's recent events (files received, deleted, sent, conflicts, peers coming and
//! going), kept in a bounded ring and followed by clients with a long poll.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use raftshare_raft::admin::{Event, EventKind};
use tokio::sync::watch;

use crate::clock::now_ms;

/// Events kept for clients that join late (older ones are dropped).
const KEEP: usize = 2000;

/// A bounded, followable log of events.
pub struct EventLog {
    ring: Mutex<VecDeque<Event>>,
    /// The seq of the newest event (0: none yet); followers wait on it.
    newest: watch::Sender<u64>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog { ring: Mutex::new(VecDeque::with_capacity(KEEP)), newest: watch::channel(0).0 }
    }
}

impl EventLog {
    /// Record an event now.
    pub fn push(&self, kind: EventKind) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let seq = ring.back().map(|e| e.seq + 1).unwrap_or(1);
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(Event { seq, at_ms: now_ms(), kind });
        drop(ring);
        self.newest.send_replace(seq);
    }

    /// The kept events after `after` (all if None).
    pub fn since(&self, after: Option<u64>) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().filter(|e| after.is_none_or(|a| e.seq > a)).cloned().collect()
    }

    /// Like `since`, but if there is nothing new, wait up to `wait` for something.
    pub async fn wait_since(&self, after: Option<u64>, wait: Duration) -> Vec<Event> {
        let mut newest = self.newest.subscribe();
        let events = self.since(after);
        if !events.is_empty() || wait.is_zero() {
            return events;
        }
        let _ = tokio::time::timeout(wait, newest.wait_for(|n| after.is_none_or(|a| *n > a))).await;
        self.since(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(i: usize) -> EventKind {
        EventKind::LocalChange { path: format!("f{i}"), deleted: false }
    }

    #[test]
    fn keeps_the_newest_and_resumes_after_a_seq() {
        let log = EventLog::default();
        for i in 0..KEEP + 5 {
            log.push(change(i));
        }
        let all = log.since(None);
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].seq, 6);
        let last = all.last().unwrap().seq;
        assert_eq!(log.since(Some(last - 2)).len(), 2);
    }

    #[tokio::test]
    async fn a_follower_wakes_when_an_event_arrives() {
        let log = std::sync::Arc::new(EventLog::default());
        log.push(change(0));
        let follower = {
            let log = log.clone();
            tokio::spawn(async move { log.wait_since(Some(1), Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        log.push(change(1));
        let got = tokio::time::timeout(Duration::from_secs(5), follower).await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].seq, 2);
        assert!(log.wait_since(Some(2), Duration::from_millis(10)).await.is_empty());
    }
}
