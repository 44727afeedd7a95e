//! LAN discovery, so nobody has to type addresses: a node sends a small UDP beacon
//! (cluster id, node name, address; never the key) to the broadcast address of its listen
//! address's subnet, and answers probes with it; `raftshare join` without an address
//! probes, lists the clusters it hears, and joins the one chosen.
//!
//! A beacon is only a hint: the handshake still decides trust, so a forged beacon can at
//! worst make `join` dial a node that then fails to prove the cluster key. A node
//! listening on 127.0.0.1 uses 127.255.255.255, the only discovery address tests use.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use raftshare_raft::admin::{AdminRequest, AdminResponse};
use raftshare_raft::key::Keyring;
use raftshare_raft::{NodeId, Raft};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::client::NodeClient;
use crate::config::{default_allow, Config, DataDir};

/// The UDP port beacons and probes go to (the transport's default port + 1).
pub const DISCOVERY_PORT: u16 = crate::config::DEFAULT_PORT + 1;
/// How often a member announces itself unasked.
const BEACON_EVERY: Duration = Duration::from_secs(30);
/// How long `join` listens for answers.
pub const LISTEN_FOR: Duration = Duration::from_secs(3);
/// Every datagram starts with this, so stray traffic on the port is ignored.
const MAGIC: &str = "raftshare-discovery/1";
/// Larger datagrams are not ours.
const MAX_DATAGRAM: usize = 1024;

/// What travels: a probe ("who is there?") or a beacon ("a member of cluster X is here").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Datagram {
    magic: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Probe,
    Beacon(Beacon),
}

/// One node's announcement: no secret in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Beacon {
    /// Derived from the cluster key (it does not reveal the key).
    pub cluster_id: String,
    pub node_id: NodeId,
    pub name: String,
    /// The address to join through.
    pub addr: String,
}

fn encode(kind: Kind) -> Vec<u8> {
    serde_json::to_vec(&Datagram { magic: MAGIC.into(), kind }).unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Option<Kind> {
    let datagram: Datagram = serde_json::from_slice(bytes).ok()?;
    (datagram.magic == MAGIC).then_some(datagram.kind)
}

/// The broadcast addresses of the subnet(s) of a node listening on `listen`: loopback
/// gives 127.255.255.255; a LAN address its interface's broadcast; 0.0.0.0 every
/// non-loopback IPv4 interface's. IPv6 has no broadcast: none.
pub fn broadcast_targets(listen: SocketAddr) -> Vec<Ipv4Addr> {
    let IpAddr::V4(ip) = listen.ip() else { return vec![] };
    if ip.is_loopback() {
        return vec![Ipv4Addr::new(127, 255, 255, 255)];
    }
    let mut out = vec![];
    for iface in if_addrs::get_if_addrs().unwrap_or_default() {
        if let if_addrs::IfAddr::V4(v4) = iface.addr {
            if v4.ip.is_loopback() || !(ip.is_unspecified() || v4.ip == ip) {
                continue;
            }
            let broadcast = v4.broadcast.unwrap_or_else(|| Ipv4Addr::from(u32::from(v4.ip) | !u32::from(v4.netmask)));
            if !out.contains(&broadcast) {
                out.push(broadcast);
            }
        }
    }
    out
}

/// Whether `from` is on the subnet a node listening on `listen` serves.
fn same_subnet(listen: SocketAddr, from: IpAddr) -> bool {
    let IpAddr::V4(listen_ip) = listen.ip() else { return false };
    let IpAddr::V4(from) = from else { return false };
    if listen_ip.is_loopback() {
        return from.is_loopback();
    }
    if_addrs::get_if_addrs().unwrap_or_default().into_iter().any(|iface| match iface.addr {
        if_addrs::IfAddr::V4(v4) if !v4.ip.is_loopback() && (listen_ip.is_unspecified() || v4.ip == listen_ip) => {
            let mask = u32::from(v4.netmask);
            u32::from(v4.ip) & mask == u32::from(from) & mask
        }
        _ => false,
    })
}

/// A UDP socket on `port` of every interface, shared with other raftshare nodes of this
/// computer (each receives every broadcast), allowed to broadcast.
fn bind_shared(port: u16) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_broadcast(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    UdpSocket::from_std(socket.into())
}

/// The node's side, until `shutdown`: announce itself while it is a member of a cluster,
/// and answer probes from its own subnet (and its allowed subnets) with a beacon.
pub async fn serve(raft: Raft, keys: Keyring, config: Config, shutdown: CancellationToken) {
    let targets = broadcast_targets(config.listen);
    let socket = match bind_shared(DISCOVERY_PORT) {
        Ok(socket) => socket,
        Err(e) => {
            warn!("LAN discovery is off (cannot use UDP port {DISCOVERY_PORT}: {e}); `join` needs an address then");
            return;
        }
    };
    let allow = if config.allow.is_empty() { default_allow() } else { config.allow.clone() };
    let beacon = |raft: &Raft| -> Option<Vec<u8>> {
        let metrics = raft.metrics().borrow().clone();
        metrics.membership_config.membership().get_node(&config.node_id)?;
        Some(encode(Kind::Beacon(Beacon {
            // The key in use now: after a rotation the cluster is known by its new id.
            cluster_id: keys.cluster_id(),
            node_id: config.node_id,
            name: config.name.clone(),
            addr: config.advertise.to_string(),
        })))
    };
    let mut tick = tokio::time::interval(BEACON_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Some(bytes) = beacon(&raft) {
                    for target in &targets {
                        let to = SocketAddrV4::new(*target, DISCOVERY_PORT);
                        if let Err(e) = socket.send_to(&bytes, to).await {
                            debug!("cannot send the discovery beacon to {to}: {e}");
                        }
                    }
                }
            }
            got = socket.recv_from(&mut buf) => {
                let Ok((len, from)) = got else { continue };
                if decode(&buf[..len]) != Some(Kind::Probe) {
                    continue;
                }
                if !same_subnet(config.listen, from.ip()) || !allow.iter().any(|net| net.contains(&from.ip())) {
                    debug!(%from, "discovery probe from outside this node's subnet: not answered");
                    continue;
                }
                if let Some(bytes) = beacon(&raft) {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        }
    }
}

/// Probe the subnet of `listen` for `window` and return every node heard (one beacon per node).
pub async fn discover(listen: SocketAddr, window: Duration) -> Result<Vec<Beacon>> {
    let targets = broadcast_targets(listen);
    if targets.is_empty() {
        bail!(
            "cannot search the LAN from listen address {listen}: discovery needs an IPv4 listen address; \
             pass the address of a member instead: `raftshare join ADDR`"
        );
    }
    let socket = bind_shared(0).context("cannot open a UDP socket to search the LAN")?;
    let probe = encode(Kind::Probe);
    let mut heard: BTreeMap<NodeId, Beacon> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + window;
    let mut resend = tokio::time::interval(Duration::from_millis(1000));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = resend.tick() => {
                for target in &targets {
                    let to = SocketAddrV4::new(*target, DISCOVERY_PORT);
                    socket.send_to(&probe, to).await.with_context(|| format!("cannot send a discovery probe to {to}"))?;
                }
            }
            got = socket.recv_from(&mut buf) => {
                let Ok((len, _from)) = got else { continue };
                if let Some(Kind::Beacon(beacon)) = decode(&buf[..len]) {
                    heard.insert(beacon.node_id, beacon);
                }
            }
        }
    }
    Ok(heard.into_values().collect())
}

/// Clusters heard, by cluster id, each with its members (sorted by name).
pub fn by_cluster(heard: &[Beacon]) -> BTreeMap<String, Vec<Beacon>> {
    let mut out: BTreeMap<String, Vec<Beacon>> = BTreeMap::new();
    for beacon in heard {
        out.entry(beacon.cluster_id.clone()).or_default().push(beacon.clone());
    }
    for members in out.values_mut() {
        members.sort_by(|a, b| a.name.cmp(&b.name).then(a.node_id.cmp(&b.node_id)));
    }
    out
}

fn describe(cluster_id: &str, members: &[Beacon], own: &str) -> String {
    let names: Vec<String> = members.iter().map(|m| format!("{} at {}", m.name, m.addr)).collect();
    let key = if cluster_id == own { "this node's key" } else { "another key" };
    format!("cluster {cluster_id} ({key}): {}", names.join(", "))
}

/// Which member to join through, found on the LAN: asks on a terminal; otherwise takes
/// the only cluster with this node's cluster id, or fails listing what it heard.
pub async fn choose_peer(data_dir: &DataDir) -> Result<String> {
    let (config, key) = data_dir.load()?;
    let own = key.cluster_id();
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let targets: Vec<String> = broadcast_targets(config.listen).iter().map(ToString::to_string).collect();
    eprintln!("searching the LAN for raftshare clusters ({}:{DISCOVERY_PORT})…", targets.join(", "));
    let heard: Vec<Beacon> =
        discover(config.listen, LISTEN_FOR).await?.into_iter().filter(|b| b.node_id != config.node_id).collect();
    let clusters = by_cluster(&heard);
    if clusters.is_empty() {
        bail!(
            "no raftshare cluster answered on this subnet within {} s: is a member running (`raftshare run`) on this \
             LAN? Or pass a member's address: `raftshare join ADDR` (`raftshare invite` on a member prints it)",
            LISTEN_FOR.as_secs()
        );
    }
    let list: Vec<(&String, &Vec<Beacon>)> = clusters.iter().collect();
    if interactive {
        eprintln!("heard:");
        for (i, (id, members)) in list.iter().enumerate() {
            eprintln!("  {}) {}", i + 1, describe(id, members, &own));
        }
        let default = list.iter().position(|(id, _)| **id == own).map(|i| i + 1);
        loop {
            match default {
                Some(d) => eprint!("join which cluster? [1-{}, Enter: {d}] ", list.len()),
                None => eprint!("join which cluster? [1-{}] ", list.len()),
            }
            std::io::stderr().flush()?;
            let mut line = String::new();
            if std::io::stdin().lock().read_line(&mut line)? == 0 {
                bail!("no cluster chosen");
            }
            let choice = match line.trim() {
                "" => default,
                text => text.parse::<usize>().ok().filter(|n| (1..=list.len()).contains(n)),
            };
            let Some(choice) = choice else {
                eprintln!("type a number from 1 to {}", list.len());
                continue;
            };
            let (id, members) = list[choice - 1];
            if *id != own {
                bail!(
                    "cluster {id} has another key than this node ({own}): it would refuse the join. Set this node up \
                     with that cluster's key (`raftshare invite` on one of its members prints the commands)"
                );
            }
            return Ok(members[0].addr.clone());
        }
    }
    let mine: Vec<&(&String, &Vec<Beacon>)> = list.iter().filter(|(id, _)| **id == own).collect();
    match mine.as_slice() {
        [(_, members)] => {
            let peer = members[0].addr.clone();
            eprintln!("found this node's cluster {own}: joining through {} at {peer}", members[0].name);
            Ok(peer)
        }
        _ => {
            let heard: Vec<String> = list.iter().map(|(id, m)| format!("  {}", describe(id, m, &own))).collect();
            bail!(
                "none of the clusters heard has this node's cluster id {own} (its key decides which cluster it may join):\n{}\n\
                 set this node up with the right key (`raftshare invite` on a member), or pass an address: `raftshare join ADDR`",
                heard.join("\n")
            )
        }
    }
}

/// `raftshare join [ADDR]`: find a member if no address is given, ask the node to join
/// through it, and show how far it has caught up while the cluster copies its log.
pub async fn join(data_dir: &DataDir, peer: Option<String>, learner: bool) -> Result<()> {
    let client = NodeClient::connect(data_dir).await?;
    let peer = match peer {
        Some(peer) => peer,
        None => choose_peer(data_dir).await?,
    };
    let show = std::io::stderr().is_terminal();
    let progress = async {
        if !show {
            return std::future::pending::<()>().await;
        }
        let Ok(watcher) = NodeClient::connect(data_dir).await else { return std::future::pending().await };
        let started = std::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Ok(AdminResponse::Status(s)) = watcher.query(AdminRequest::Status).await {
                let applied = s.applied_index.unwrap_or(0);
                let target = s.committed_index.unwrap_or(0).max(applied);
                eprint!("\r{}", join_progress_line(&peer, applied, target, started.elapsed()));
                let _ = std::io::stderr().flush();
            }
        }
    };
    let answer = tokio::select! {
        answer = client.change(AdminRequest::JoinCluster { peer: peer.clone(), learner }) => answer,
        _ = progress => unreachable!("the progress display never ends by itself"),
    };
    if show {
        eprint!("\r\x1b[2K");
    }
    match answer? {
        AdminResponse::Done(msg) => {
            println!("{msg}");
            Ok(())
        }
        _ => bail!("the node gave an unexpected answer to `join`"),
    }
}

/// `joining through ADDR [#####-----] 120/400 entries  3 s` (what `join` shows on a terminal).
pub fn join_progress_line(peer: &str, applied: u64, target: u64, elapsed: Duration) -> String {
    const WIDTH: usize = 24;
    let filled = if target == 0 { 0 } else { (applied.min(target) as usize * WIDTH) / target as usize };
    format!(
        "joining through {peer} [{}{}] {applied}/{target} entries  {} s ",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        elapsed.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_broadcasts_only_to_127_255_255_255() {
        assert_eq!(broadcast_targets("127.0.0.1:7070".parse().unwrap()), vec![Ipv4Addr::new(127, 255, 255, 255)]);
        assert!(broadcast_targets("[::1]:7070".parse().unwrap()).is_empty());
        assert!(same_subnet("127.0.0.1:1".parse().unwrap(), "127.0.0.1".parse().unwrap()));
        assert!(!same_subnet("127.0.0.1:1".parse().unwrap(), "10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn datagrams_carry_no_key_and_ignore_strangers() {
        let beacon = Beacon { cluster_id: "c1".into(), node_id: 7, name: "a".into(), addr: "127.0.0.1:1".into() };
        let bytes = encode(Kind::Beacon(beacon.clone()));
        assert_eq!(decode(&bytes), Some(Kind::Beacon(beacon)));
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains("key"), "{text}");
        assert_eq!(decode(&encode(Kind::Probe)), Some(Kind::Probe));
        assert_eq!(decode(b"{\"magic\":\"other\",\"kind\":\"probe\"}"), None);
        assert_eq!(decode(b"garbage"), None);
    }

    #[test]
    fn clusters_are_grouped_and_progress_is_drawn() {
        let b =
            |c: &str, id, name: &str| Beacon { cluster_id: c.into(), node_id: id, name: name.into(), addr: "x".into() };
        let grouped = by_cluster(&[b("c2", 1, "z"), b("c1", 2, "b"), b("c1", 3, "a")]);
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped["c1"].iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let line = join_progress_line("127.0.0.1:1", 50, 100, Duration::from_secs(2));
        assert!(line.contains("[############------------] 50/100 entries  2 s"), "{line}");
    }
}
