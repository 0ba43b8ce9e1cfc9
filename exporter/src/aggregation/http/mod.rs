//! HTTP chunks into exchanges. Per connection (process × kernel connection id) the
//! requests wait in order; each response takes the oldest (keep-alive and pipelining
//! both keep order in HTTP/1.x). Whether the process is the server or the client
//! follows from who sent the request. An exchange starts at the first request byte and
//! ends at the first response byte (time to first byte), both kernel timestamps.
//!
//! Bounded: only connections with requests in flight are held, at most
//! `max_connections` of them and [`MAX_PENDING_PER_CONNECTION`] requests each; what is
//! pushed out is counted, never dropped silently.
mod parse;
mod route;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

#[cfg(test)]
pub use parse::{Parsed, requests, responses};
pub use parse::{RequestHead, ResponseHead};
use parse::{requests_into, responses_into};
pub use route::Routes;

use super::KernelKeyMap;
use crate::events::HttpChunk;

/// Requests waiting for their responses on one connection, at most (a deep pipeline).
const MAX_PENDING_PER_CONNECTION: usize = 64;
/// How long a connection's end waits for responses still in flight before its unanswered
/// requests end. The kernel's teardown of a socket can be seen before its last response:
/// on loopback or a veth the peer's reset (it read what it wanted and closed) arrives in
/// the softirq of that very send, before the send returns and is reported.
const CLOSE_GRACE_NS: u64 = 500_000_000;
/// Emptied request queues kept for new connections, at most, and the largest kept (in
/// requests): a few KiB held for a connection churn of one per request.
const SPARE_QUEUES: usize = 256;
const SPARE_QUEUE_CAPACITY: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The process received the request.
    Server,
    /// The process sent it.
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// No response within the configured time.
    Timeout,
    /// The connection ended before the response.
    ConnectionReset,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpExchange {
    /// Unique per exchange while the agent runs.
    pub id: u64,
    /// For a request served here that a process on this host sent: that client
    /// exchange's id, so the two spans can join one trace.
    pub parent: Option<u64>,
    /// For a request sent from here: a server on this host was matched with it.
    pub linked: bool,
    pub pid: u32,
    pub role: Role,
    pub tls: bool,
    pub request: RequestHead,
    pub response: Option<ResponseHead>,
    pub error: Option<HttpError>,
    /// `CLOCK_MONOTONIC` ns: first request byte seen, and first response byte (or when
    /// the exchange was given up).
    pub start_ns: u64,
    pub end_ns: u64,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpLosses {
    /// Bytes that looked like HTTP to the kernel but did not parse.
    pub parse: u64,
    /// Requests pushed out of a full connection table or a full pipeline.
    pub pending_full: u64,
    /// Responses with no request waiting (the request came before the agent started).
    pub unpaired: u64,
    /// Requests still unanswered when the agent stopped: their outcome is unknown.
    pub at_exit: u64,
}

impl std::ops::AddAssign for HttpLosses {
    fn add_assign(&mut self, other: Self) {
        self.parse += other.parse;
        self.pending_full += other.pending_full;
        self.unpaired += other.unpaired;
        self.at_exit += other.at_exit;
    }
}

#[derive(Clone, Copy, Debug)]
pub struct HttpSettings {
    pub timeout_ns: u64,
    pub max_connections: usize,
    /// A process whose chunks are skipped: the agent itself (its OTLP/HTTP exports are
    /// not the workload's traffic, and observing them would feed the next export).
    pub skip_pid: u32,
}

struct Pending {
    request: RequestHead,
    at_ns: u64,
    id: u64,
    parent: Option<u64>,
    /// A client request already matched with the server side's view of it.
    linked: bool,
}

struct Connection {
    role: Role,
    tls: bool,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    pending: VecDeque<Pending>,
    last_ns: u64,
    /// When its end (EOF, reset or the socket's teardown) was seen: responses may still
    /// arrive for `CLOSE_GRACE_NS`, requests never.
    closed_ns: Option<u64>,
}

impl Connection {
    /// `pending`: an empty queue, reused from a connection that ended.
    fn new(role: Role, first: &HttpChunk, pending: VecDeque<Pending>) -> Self {
        Self {
            role,
            tls: first.tls,
            local: first.local,
            peer: first.peer,
            pending,
            last_ns: first.at_ns,
            closed_ns: None,
        }
    }

    /// Whether `chunk` can be this connection's: ends that are unknown on either side
    /// (TLS before its socket was seen) do not tell.
    fn same_ends(&self, chunk: &HttpChunk) -> bool {
        let differ = |known: Option<SocketAddr>, seen: Option<SocketAddr>| known.zip(seen).is_some_and(|(a, b)| a != b);
        !differ(self.local, chunk.local) && !differ(self.peer, chunk.peer)
    }
}

/// A connection's two ends as its own side sees them (local, peer).
type Ends = (SocketAddr, SocketAddr);

pub struct HttpTracker {
    settings: HttpSettings,
    connections: KernelKeyMap<(u32, u64), Connection>,
    /// Connections by role and ends, to find the other side of a request when both are
    /// on this host. Entries are checked against `connections` when used. Keyed by
    /// addresses and ports a remote peer chooses: a seeded hash, and a fast one
    /// (`foldhash`: `SipHash` here took about 5 % of the stage thread under load).
    by_ends: HashMap<(Role, Ends), (u32, u64), foldhash::fast::RandomState>,
    next_id: u64,
    losses: HttpLosses,
    /// Reused for the heads parsed from each chunk.
    request_heads: Vec<RequestHead>,
    response_heads: Vec<ResponseHead>,
    /// Emptied request queues of connections that went idle.
    spare_queues: Vec<VecDeque<Pending>>,
}

impl HttpTracker {
    pub fn new(settings: HttpSettings) -> Self {
        Self {
            settings,
            connections: KernelKeyMap::default(),
            by_ends: HashMap::default(),
            next_id: 1,
            losses: HttpLosses::default(),
            request_heads: Vec::new(),
            response_heads: Vec::new(),
            spare_queues: Vec::new(),
        }
    }

    /// Pairs a request just seen with the other side's view of it, when both ends are
    /// on this host: the oldest unmatched request with the same method and path on the
    /// connection whose ends are these reversed. Either side may be seen first (a
    /// loopback receiver can read before the sender's send returns). Returns the other
    /// side's request id when matched.
    fn match_other_side(&mut self, role: Role, ends: Option<Ends>, request: &RequestHead, id: u64) -> Option<u64> {
        let (local, peer) = ends?;
        let other_role = if role == Role::Server { Role::Client } else { Role::Server };
        let key = *self.by_ends.get(&(other_role, (peer, local)))?;
        let other = self.connections.get_mut(&key).filter(|c| c.role == other_role)?;
        let pending = other
            .pending
            .iter_mut()
            .find(|p| !p.linked && p.request.method == request.method && p.request.path == request.path)?;
        pending.linked = true;
        if role == Role::Client {
            // The server's request was seen first: it becomes this one's child.
            pending.parent = Some(id);
        }
        Some(pending.id)
    }

    pub fn chunk(&mut self, chunk: &HttpChunk, out: &mut Vec<HttpExchange>) {
        if chunk.pid == self.settings.skip_pid {
            return;
        }
        let key = (chunk.pid, chunk.connection);
        if chunk.is_close() {
            // Nothing in flight: forget it now; else give its responses a grace (expire).
            match self.connections.get_mut(&key) {
                Some(connection) if connection.pending.is_empty() => self.forget(key),
                Some(connection) => {
                    connection.closed_ns.get_or_insert(chunk.at_ns);
                }
                None => {}
            }
            return;
        }
        if chunk.payload.starts_with(b"HTTP/") {
            self.responses(key, chunk, out);
        } else {
            self.requests(key, chunk, out);
        }
    }

    fn requests(&mut self, key: (u32, u64), chunk: &HttpChunk, out: &mut Vec<HttpExchange>) {
        let mut heads = std::mem::take(&mut self.request_heads);
        if requests_into(&chunk.payload, &mut heads) {
            self.pending_requests(key, chunk, &mut heads, out);
        } else {
            self.losses.parse += 1;
        }
        heads.clear();
        self.request_heads = heads;
    }

    fn pending_requests(
        &mut self,
        key: (u32, u64),
        chunk: &HttpChunk,
        heads: &mut Vec<RequestHead>,
        out: &mut Vec<HttpExchange>,
    ) {
        let role = if chunk.sent { Role::Client } else { Role::Server };
        if !self.connections.contains_key(&key) {
            if self.connections.len() >= self.settings.max_connections {
                self.evict_oldest();
            }
            let queue = self.spare_queues.pop().unwrap_or_default();
            self.connections.insert(key, Connection::new(role, chunk, queue));
        }
        let connection = self.connections.get_mut(&key).expect("inserted above");
        if connection.role != role || !connection.same_ends(chunk) || connection.closed_ns.is_some() {
            // Another connection under the same kernel id: requests the other way, other
            // ends (a socket's memory reused before its teardown was seen), or after its
            // end. The old one ended unanswered, when its end was seen or by the time it
            // was last active at the latest.
            let old = std::mem::replace(connection, Connection::new(role, chunk, VecDeque::new()));
            let ended = old.closed_ns.unwrap_or(old.last_ns);
            give_up(key.0, old, ended, HttpError::ConnectionReset, out);
        }
        let connection = self.connections.get_mut(&key).expect("inserted above");
        connection.last_ns = chunk.at_ns;
        connection.local = chunk.local.or(connection.local);
        connection.peer = chunk.peer.or(connection.peer);
        let ends = connection.local.zip(connection.peer);
        if let Some(ends) = ends {
            self.by_ends.insert((role, ends), key);
        }
        for request in heads.drain(..) {
            let id = self.next_id;
            self.next_id += 1;
            let other = self.match_other_side(role, ends, &request, id);
            let (parent, linked) = match role {
                Role::Server => (other, false),
                Role::Client => (None, other.is_some()),
            };
            let connection = self.connections.get_mut(&key).expect("inserted above");
            if connection.pending.len() >= MAX_PENDING_PER_CONNECTION {
                connection.pending.pop_front();
                self.losses.pending_full += 1;
            }
            connection.pending.push_back(Pending { request, at_ns: chunk.at_ns, id, parent, linked });
        }
    }

    fn responses(&mut self, key: (u32, u64), chunk: &HttpChunk, out: &mut Vec<HttpExchange>) {
        let mut heads = std::mem::take(&mut self.response_heads);
        if responses_into(&chunk.payload, &mut heads) {
            self.answer(key, chunk, &heads, out);
        } else {
            self.losses.parse += 1;
        }
        heads.clear();
        self.response_heads = heads;
    }

    fn answer(&mut self, key: (u32, u64), chunk: &HttpChunk, heads: &[ResponseHead], out: &mut Vec<HttpExchange>) {
        let role = if chunk.sent { Role::Server } else { Role::Client };
        let Some(connection) = self.connections.get_mut(&key).filter(|c| c.role == role && c.same_ends(chunk)) else {
            self.losses.unpaired += heads.len() as u64;
            return;
        };
        connection.last_ns = chunk.at_ns;
        for &response in heads {
            let Some(pending) = connection.pending.pop_front() else {
                self.losses.unpaired += 1;
                continue;
            };
            out.push(HttpExchange {
                id: pending.id,
                parent: pending.parent,
                linked: pending.linked,
                pid: key.0,
                role,
                tls: connection.tls,
                request: pending.request,
                response: Some(response),
                error: None,
                start_ns: pending.at_ns,
                end_ns: chunk.at_ns,
                local: chunk.local.or(connection.local),
                peer: chunk.peer.or(connection.peer),
            });
        }
        // Nothing in flight: the next request (which carries its own ends) starts the
        // connection afresh, so only connections with requests in flight are held.
        if connection.pending.is_empty() {
            self.forget(key);
        }
    }

    /// Drops a connection with nothing in flight, keeping its emptied queue for the
    /// next one: most connections come and go with every request.
    fn forget(&mut self, key: (u32, u64)) {
        if let Some(connection) = self.connections.remove(&key)
            && self.spare_queues.len() < SPARE_QUEUES
            && connection.pending.capacity() <= SPARE_QUEUE_CAPACITY
        {
            self.spare_queues.push(connection.pending);
        }
    }

    /// Ends requests that waited longer than the timeout, and those of connections whose
    /// end is older than the grace; forgets idle connections.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<HttpExchange>) {
        let ended: Vec<(u32, u64)> = self
            .connections
            .iter()
            .filter(|(_, c)| c.closed_ns.is_some_and(|at| now_ns.saturating_sub(at) >= CLOSE_GRACE_NS))
            .map(|(key, _)| *key)
            .collect();
        for key in ended {
            let connection = self.connections.remove(&key).expect("listed above");
            let at = connection.closed_ns.expect("listed above");
            give_up(key.0, connection, at, HttpError::ConnectionReset, out);
        }
        let timeout = self.settings.timeout_ns;
        for (&(pid, _), connection) in &mut self.connections {
            while connection.pending.front().is_some_and(|p| now_ns.saturating_sub(p.at_ns) >= timeout) {
                let pending = connection.pending.pop_front().expect("checked above");
                out.push(exchange_without_response(pid, connection, pending, now_ns, HttpError::Timeout));
            }
        }
        self.connections.retain(|_, c| !c.pending.is_empty() || now_ns.saturating_sub(c.last_ns) < timeout);
        let connections = &self.connections;
        self.by_ends.retain(|_, key| connections.contains_key(key));
    }

    /// Makes room by dropping the least recently active tenth of the table at once, so
    /// that a full table costs one sort per many new connections, not a scan per one.
    fn evict_oldest(&mut self) {
        let mut by_age: Vec<(u64, (u32, u64))> = self.connections.iter().map(|(k, c)| (c.last_ns, *k)).collect();
        let n = (by_age.len() / 10).max(1);
        if by_age.len() > n {
            by_age.select_nth_unstable(n - 1);
        }
        for (_, key) in by_age.into_iter().take(n) {
            if let Some(connection) = self.connections.remove(&key) {
                self.losses.pending_full += connection.pending.len() as u64;
            }
        }
    }

    pub fn take_losses(&mut self) -> HttpLosses {
        std::mem::take(&mut self.losses)
    }

    /// Connections tracked now.
    pub fn connections(&self) -> usize {
        self.connections.len()
    }

    /// At shutdown: the requests still unanswered are counted (`at_exit`) and forgotten.
    pub fn abandon(&mut self) {
        self.losses.at_exit += self.connections.values().map(|c| c.pending.len() as u64).sum::<u64>();
        self.connections.clear();
        self.by_ends.clear();
    }
}

fn give_up(pid: u32, mut connection: Connection, at_ns: u64, error: HttpError, out: &mut Vec<HttpExchange>) {
    while let Some(pending) = connection.pending.pop_front() {
        out.push(exchange_without_response(pid, &connection, pending, at_ns, error));
    }
}

fn exchange_without_response(
    pid: u32,
    connection: &Connection,
    pending: Pending,
    at_ns: u64,
    error: HttpError,
) -> HttpExchange {
    HttpExchange {
        id: pending.id,
        parent: pending.parent,
        linked: pending.linked,
        pid,
        role: connection.role,
        tls: connection.tls,
        request: pending.request,
        response: None,
        error: Some(error),
        start_ns: pending.at_ns,
        end_ns: at_ns.max(pending.at_ns),
        local: connection.local,
        peer: connection.peer,
    }
}
