//! How many connections the server holds, and from whom: [`ConnectionLimits`] and the
//! [`Slots`] that count them.
//!
//! A slot is taken on accept, before a byte is read, and given back when the connection
//! ends. Anyone on the subnet can open sockets and say nothing, so: each address may hold
//! only a few connections still in the handshake (and a bounded number in all), and part
//! of the slots are kept for this machine's CLI and for members, so neither is locked out
//! while strangers fill the rest. A connection with no slot is closed at once.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// Limits on the connections the server holds, besides `TransportConfig::max_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections one address may have still in the handshake (before its key proof).
    pub per_address_handshaking: usize,
    /// Connections one address may hold in all.
    pub per_address: usize,
    /// Slots only 127.0.0.1 and ::1 (the local CLI) may use once the others are taken.
    pub loopback_reserve: usize,
    /// Slots only members' addresses may use once the others are taken (a peer
    /// redialling after a blip).
    pub member_reserve: usize,
}

impl Default for ConnectionLimits {
    /// 16 in the handshake and 64 in all per address; 16 slots kept for loopback and 32
    /// for members (of the default 256).
    fn default() -> Self {
        ConnectionLimits { per_address_handshaking: 16, per_address: 64, loopback_reserve: 16, member_reserve: 32 }
    }
}

/// Which slots a connection may use beyond the shared ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reserve {
    Loopback,
    Member,
    None,
}

impl Reserve {
    /// 127.0.0.1 and ::1 only: the addresses the local CLI connects from. The rest of
    /// 127/8 is the shared pool's, so a local flood from there does not starve the CLI.
    pub(super) fn of(ip: IpAddr, is_member: impl FnOnce() -> bool) -> Reserve {
        if ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == IpAddr::V6(Ipv6Addr::LOCALHOST) {
            Reserve::Loopback
        } else if is_member() {
            Reserve::Member
        } else {
            Reserve::None
        }
    }
}

/// Why a connection got no slot (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Full {
    Handshaking,
    Address,
    Server,
}

impl Full {
    pub(super) fn why(self) -> &'static str {
        match self {
            Full::Handshaking => "too many connections from this address are still in the handshake",
            Full::Address => "too many connections from this address",
            Full::Server => "every connection slot is taken",
        }
    }
}

/// The server's connection slots; shared by its accept loop and connection tasks.
#[derive(Debug)]
pub(super) struct Slots {
    limits: ConnectionLimits,
    shared: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    shared: usize,
    loopback: usize,
    member: usize,
    per_ip: HashMap<IpAddr, PerIp>,
}

#[derive(Debug, Default, Clone, Copy)]
struct PerIp {
    handshaking: usize,
    open: usize,
}

impl Slots {
    pub(super) fn new(max_connections: usize, limits: ConnectionLimits) -> Arc<Slots> {
        let max = max_connections.max(1);
        // The reserves come out of the total; keep at least one shared slot.
        let loopback_reserve = limits.loopback_reserve.min(max / 4);
        let member_reserve = limits.member_reserve.min(max / 4);
        let limits = ConnectionLimits { loopback_reserve, member_reserve, ..limits };
        Arc::new(Slots { limits, shared: max - loopback_reserve - member_reserve, state: Mutex::default() })
    }

    /// A slot for a new connection from `ip`, counted as in the handshake until
    /// [`Slot::authenticated`]; or why there is none.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr, reserve: Reserve) -> Result<Slot, Full> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let per_ip = state.per_ip.get(&ip).copied().unwrap_or_default();
        if per_ip.handshaking >= self.limits.per_address_handshaking.max(1) {
            return Err(Full::Handshaking);
        }
        if per_ip.open + per_ip.handshaking >= self.limits.per_address.max(1) {
            return Err(Full::Address);
        }
        let pool = if state.shared < self.shared {
            state.shared += 1;
            Pool::Shared
        } else if reserve == Reserve::Loopback && state.loopback < self.limits.loopback_reserve {
            state.loopback += 1;
            Pool::Loopback
        } else if reserve == Reserve::Member && state.member < self.limits.member_reserve {
            state.member += 1;
            Pool::Member
        } else {
            return Err(Full::Server);
        };
        state.per_ip.entry(ip).or_default().handshaking += 1;
        Ok(Slot { slots: self.clone(), ip, pool, handshaking: true })
    }
}

#[derive(Debug, Clone, Copy)]
enum Pool {
    Shared,
    Loopback,
    Member,
}

/// One connection's slot; given back when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
    pool: Pool,
    handshaking: bool,
}

impl Slot {
    /// The handshake is done: the connection no longer counts against its address's
    /// handshake limit.
    pub(super) fn authenticated(&mut self) {
        if std::mem::replace(&mut self.handshaking, false) {
            let mut state = self.slots.state.lock().unwrap_or_else(|p| p.into_inner());
            let per_ip = state.per_ip.entry(self.ip).or_default();
            per_ip.handshaking -= 1;
            per_ip.open += 1;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.slots.state.lock().unwrap_or_else(|p| p.into_inner());
        match self.pool {
            Pool::Shared => state.shared -= 1,
            Pool::Loopback => state.loopback -= 1,
            Pool::Member => state.member -= 1,
        }
        if let Some(per_ip) = state.per_ip.get_mut(&self.ip) {
            if self.handshaking {
                per_ip.handshaking -= 1;
            } else {
                per_ip.open -= 1;
            }
            if per_ip.handshaking == 0 && per_ip.open == 0 {
                state.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_gets_few_handshakes_and_a_bounded_share() {
        let limits =
            ConnectionLimits { per_address_handshaking: 2, per_address: 3, loopback_reserve: 0, member_reserve: 0 };
        let slots = Slots::new(100, limits);
        let a = ip("10.0.0.1");
        let mut first = slots.admit(a, Reserve::None).unwrap();
        let _second = slots.admit(a, Reserve::None).unwrap();
        assert_eq!(slots.admit(a, Reserve::None).unwrap_err(), Full::Handshaking);
        assert!(slots.admit(ip("10.0.0.2"), Reserve::None).is_ok(), "another address is not held up");
        first.authenticated();
        let _third = slots.admit(a, Reserve::None).unwrap();
        assert_eq!(slots.admit(a, Reserve::None).unwrap_err(), Full::Handshaking);
        drop(_second);
        assert_eq!(slots.admit(a, Reserve::None).map(|_| ()).ok(), Some(()), "a slot given back is free again");
        let _fourth = slots.admit(a, Reserve::None).unwrap();
        let mut held = vec![first, _third, _fourth];
        for slot in &mut held {
            slot.authenticated();
        }
        assert_eq!(slots.admit(a, Reserve::None).unwrap_err(), Full::Address);
    }

    #[test]
    fn reserved_slots_stay_free_for_loopback_and_members() {
        let limits =
            ConnectionLimits { per_address_handshaking: 100, per_address: 100, loopback_reserve: 2, member_reserve: 2 };
        let slots = Slots::new(8, limits);
        let stranger = ip("10.0.0.9");
        let held: Vec<_> = (0..4).map(|_| slots.admit(stranger, Reserve::None).unwrap()).collect();
        assert_eq!(slots.admit(stranger, Reserve::None).unwrap_err(), Full::Server);
        assert_eq!(slots.admit(ip("127.0.0.2"), Reserve::of(ip("127.0.0.2"), || false)).unwrap_err(), Full::Server);
        let cli: Vec<_> =
            (0..2).map(|_| slots.admit(ip("127.0.0.1"), Reserve::of(ip("127.0.0.1"), || false)).unwrap()).collect();
        assert_eq!(
            slots.admit(ip("::1"), Reserve::Loopback).unwrap_err(),
            Full::Server,
            "the loopback reserve is full"
        );
        let member = ip("10.0.0.5");
        let peers: Vec<_> = (0..2).map(|_| slots.admit(member, Reserve::of(member, || true)).unwrap()).collect();
        assert_eq!(slots.admit(member, Reserve::Member).unwrap_err(), Full::Server);
        drop(held);
        assert!(slots.admit(stranger, Reserve::None).is_ok(), "shared slots given back");
        drop((cli, peers));
    }
}
