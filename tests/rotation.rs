//! Key rotation against real `raftshare` processes on 127.0.0.1: after `remove` and
//! `rotate-key`, the removed computer (still running, still holding the old key) can no
//! longer get in, and every member syncs with the new key, including one that was
//! stopped during the rotation and catches up when it starts again.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{hash_hex, wait_trees, wait_until, Cluster, TestNode};
use raftshare_raft::admin::AdminRequest;
use raftshare_raft::key::{ClusterKey, Identity};
use raftshare_raft::proto::{Request, Response};
use raftshare_raft::transport::{Client, TransportConfig};

const SETTLE: Duration = Duration::from_secs(30);

/// `node`'s identity key, read from its data dir.
fn identity_of(node: &TestNode) -> Identity {
    Identity::from_text(&std::fs::read_to_string(node.data_dir.join("identity.key")).unwrap()).unwrap()
}

/// Connects to `node` holding `key` and the identity key of `who` (none: a stranger's),
/// and returns what a ping and a key fetch are answered with (or the connection error).
fn knock(node: &TestNode, key: &str, who: Option<&TestNode>) -> Result<(Response, Response), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let addr = node.addr();
    let identity = who.map(identity_of);
    rt.block_on(async move {
        let mut cfg = TransportConfig::new(ClusterKey::from_hex(key).unwrap());
        cfg.identity = identity;
        let client = Client::connect(&addr, &cfg).await.map_err(|e| e.to_string())?;
        let wait = Duration::from_secs(5);
        let ping = client.call(Request::Admin(AdminRequest::Ping), wait).await.map_err(|e| e.to_string())?;
        let fetch = client.call(Request::FetchKey, wait).await.map_err(|e| e.to_string())?;
        Ok((ping, fetch))
    })
}

#[test]
fn after_remove_and_rotate_key_the_removed_node_is_out_and_an_offline_member_catches_up() {
    let mut cluster = Cluster::start(4);
    let old_key = cluster.nodes[0].key();
    let c_id = cluster.nodes[2].node_id();
    cluster.nodes[0].write("before.txt", b"shared before the rotation");
    let all: Vec<&TestNode> = cluster.nodes.iter().collect();
    wait_trees(&all, None, SETTLE, "before.txt everywhere");

    // d is switched off; c is removed but keeps running with the old key (a stolen laptop).
    cluster.nodes[3].stop();
    let a = &cluster.nodes[0];
    a.cli_ok(&["remove", &c_id.to_string()]);
    let out = a.cli_ok(&["rotate-key"]);
    assert!(out.contains("rotated") && out.contains("sealed to 3 members"), "{out}");
    let new_key = a.key();
    assert_ne!(new_key, old_key, "a's key file holds the new key");
    assert!(a.cli_ok(&["invite"]).contains(&new_key), "invite shows the new key");
    let b = &cluster.nodes[1];
    wait_until(SETTLE, "b to switch to the new key", || (b.key() == new_key).then_some(()));
    let log = a.cli_ok(&["log", "--json"]);
    assert!(log.contains("rotate_key") && !log.contains(&new_key), "the log shows the rotation, not the key");

    // The members sync with the new key.
    a.write("after.txt", b"written after the rotation");
    wait_trees(&[a, b], None, SETTLE, "after.txt on a and b");

    // The removed node cannot get in: with the old key it is served nothing but a key
    // fetch, and there is no copy of the new key for it.
    // It proves its own identity, which no membership lists any more.
    let (ping, fetch) = knock(a, &old_key, Some(&cluster.nodes[2])).expect("let in with a replaced key");
    assert!(matches!(ping, Response::KeyRotated), "{ping:?}");
    assert!(matches!(&fetch, Response::Error(e) if e.contains("only a member can fetch")), "{fetch:?}");
    // Nor can a computer that holds no key of this cluster.
    let stranger = knock(a, &ClusterKey::generate().to_hex(), None).unwrap_err();
    assert!(stranger.contains("another cluster"), "{stranger}");
    // c's own edits no longer reach the cluster.
    let c = &cluster.nodes[2];
    c.write("from-removed.txt", b"pushed by the removed computer");

    // d comes back with the old key: it fetches its sealed copy, then syncs.
    cluster.nodes[3].start_ready();
    let [a, b, c, d] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2], &cluster.nodes[3]];
    wait_until(SETTLE, "d to fetch the new key", || (d.key() == new_key).then_some(()));
    b.write("later.txt", b"written once d is back");
    let want = BTreeMap::from([
        ("before.txt".to_string(), hash_hex(b"shared before the rotation")),
        ("after.txt".to_string(), hash_hex(b"written after the rotation")),
        ("later.txt".to_string(), hash_hex(b"written once d is back")),
    ]);
    wait_trees(&[a, b, d], Some(&want), SETTLE, "a, b and d to hold exactly the members' files");
    assert!(!c.tree().contains_key("after.txt"), "the removed node gets nothing new");
    let status = d.status().expect("d answers");
    assert_eq!(status["cluster_id"].as_str(), Some(ClusterKey::from_hex(&new_key).unwrap().cluster_id().as_str()));
}

/// A removed computer posing, at its old address, as a peer whose key replaced ours:
/// whatever is asked, it says the key was rotated, and hands over a key of its own
/// making, sealed to the member it wants to cut off.
struct Forger {
    victim_identity: String,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl raftshare_raft::transport::Service for Forger {
    async fn handle(&self, _peer: raftshare_raft::transport::Peer, req: Request) -> Response {
        match req {
            Request::FetchKey => {
                self.fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let sealed = ClusterKey::from_bytes([0xEE; 32]).seal_for(&self.victim_identity, 99).unwrap();
                Response::SealedKey { epoch: 99, sealed: serde_bytes::ByteBuf::from(sealed) }
            }
            _ => Response::KeyRotated,
        }
    }
}

#[test]
fn a_removed_computer_cannot_hand_a_member_that_was_away_a_key_of_its_own() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut cluster = Cluster::start(4);
    let old_key = cluster.nodes[0].key();
    let (c_id, c_addr) = (cluster.nodes[2].node_id(), cluster.nodes[2].addr());
    cluster.nodes[3].stop();
    cluster.nodes[0].cli_ok(&["remove", &c_id.to_string()]);
    cluster.nodes[0].cli_ok(&["rotate-key"]);
    let new_key = cluster.nodes[0].key();
    wait_until(SETTLE, "b to switch to the new key", || (cluster.nodes[1].key() == new_key).then_some(()));

    // c goes, and a forger that held the old key answers at its address; a and b are off.
    cluster.nodes[2].stop();
    cluster.nodes[0].stop();
    cluster.nodes[1].stop();
    let identity = std::fs::read_to_string(cluster.nodes[3].data_dir.join("identity.key")).unwrap();
    let victim_identity = raftshare_raft::key::Identity::from_text(&identity).unwrap().public_hex();
    let fetches = Arc::new(AtomicUsize::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&c_addr))
        .unwrap_or_else(|e| panic!("cannot listen at c's old address {c_addr}: {e}"));
    let keys =
        raftshare_raft::key::Keyring::new(ClusterKey::generate(), 5, vec![ClusterKey::from_hex(&old_key).unwrap()]);
    let mut cfg = TransportConfig::new(ClusterKey::generate());
    cfg.key = keys;
    // The removed computer itself: it holds c's identity key, so d, whose membership
    // still lists c there, talks to it.
    cfg.identity = Some(identity_of(&cluster.nodes[2]));
    let forger = Forger { victim_identity, fetches: fetches.clone() };
    rt.spawn(raftshare_raft::transport::serve(listener, Arc::new(cfg), Arc::new(forger), shutdown.clone()));

    // d comes back: the forger's is the only copy it is offered, asked for again and again.
    cluster.nodes[3].start_ready();
    let d = &cluster.nodes[3];
    wait_until(SETTLE, "d to ask the forger for its key twice (or to take its key)", || {
        (fetches.load(Ordering::SeqCst) >= 2 || d.key() != old_key).then_some(())
    });
    assert_eq!(d.key(), old_key, "d took a key only a removed computer offered");
    assert!(d.log_text().contains("fewer than 2 members handed over the same copy"), "d says why it waits");

    // a and b are back: two members hand over the same copy, and d uses it.
    cluster.nodes[0].start_ready();
    cluster.nodes[1].start_ready();
    let d = &cluster.nodes[3];
    wait_until(SETTLE, "d to take the copy a and b hand over", || (d.key() == new_key).then_some(()));
    shutdown.cancel();
}

/// After a rotation the cluster is known by the new key's id everywhere, its beacons
/// included: `discover` hears one cluster, not the old one and the new one.
#[test]
fn after_rotate_key_the_beacons_carry_the_new_cluster_id() {
    let cluster = Cluster::start(2);
    let old_id = cluster.nodes[0].status().unwrap()["cluster_id"].as_str().unwrap().to_string();
    cluster.nodes[0].cli_ok(&["rotate-key"]);
    let new_id = wait_until(SETTLE, "both nodes to use the new key", || {
        let ids: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| Some(n.status()?["cluster_id"].as_str()?.to_string()))
            .collect::<Option<_>>()?;
        (ids.iter().all(|id| *id != old_id && *id == ids[0])).then(|| ids[0].clone())
    });
    let ours: Vec<String> = cluster.nodes.iter().map(TestNode::addr).collect();
    let heard: serde_json::Value = serde_json::from_str(&cluster.nodes[1].cli_ok(&["discover", "--json"])).unwrap();
    let from_ours: Vec<&serde_json::Value> = heard
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| ours.iter().any(|a| b["addr"].as_str() == Some(a.as_str())))
        .collect();
    assert!(!from_ours.is_empty(), "our nodes answer discovery: {heard}");
    assert!(from_ours.iter().all(|b| b["cluster_id"] == new_id.as_str()), "beacons after the rotation: {heard}");
}
