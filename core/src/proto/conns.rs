//! The endpoint's connections, each in a cell of its own: the endpoint and the threads that
//! work on one connection lock that connection only, so commands on different connections
//! of one endpoint run in parallel.
//!
//! A [`ConnRef`] is a connection's cell as the layer above holds it. Locking through it
//! notes the connection as touched; the endpoint picks the note up at its next
//! `handle_timeout` or `poll_transmit` (it may have something to send, and its deadline may
//! have moved). The lock order is endpoint, then connection, then the touched list.

use super::connection::Connection;
use rustc_hash::FxHashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A connection's handle: its local connection id, unique within the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

#[derive(Debug)]
struct Cell {
    conn: Mutex<Connection>,
    /// In the touched list (not yet picked up by the endpoint).
    queued: AtomicBool,
    /// Forgotten by the endpoint: commands find no connection.
    removed: AtomicBool,
}

/// Connections touched from outside the endpoint, by id.
type Touched = Arc<Mutex<Vec<u32>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One connection of an endpoint, held apart from the endpoint: commands lock the
/// connection alone. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnRef {
    id: u32,
    cell: Arc<Cell>,
    touched: Touched,
}

impl ConnRef {
    /// The connection's id in its endpoint.
    pub fn id(&self) -> ConnId {
        ConnId(self.id)
    }

    /// Locks the connection for a command; `None` once the endpoint has forgotten it. When
    /// the guard is dropped the endpoint is told the connection may have something to send
    /// (drain its `poll_transmit`).
    pub fn lock(&self) -> Option<ConnGuard<'_>> {
        let guard = lock(&self.cell.conn);
        if self.cell.removed.load(Ordering::Acquire) {
            return None;
        }
        Some(ConnGuard { guard, of: self })
    }

    /// Locks the connection to look at it only: unlike [`ConnRef::lock`], dropping the
    /// guard does not tell the endpoint anything. `None` once the endpoint has forgotten it.
    pub fn read(&self) -> Option<impl Deref<Target = Connection> + '_> {
        let guard = lock(&self.cell.conn);
        if self.cell.removed.load(Ordering::Acquire) {
            return None;
        }
        Some(guard)
    }
}

/// A locked connection; see [`ConnRef::lock`].
#[derive(Debug)]
pub struct ConnGuard<'a> {
    guard: MutexGuard<'a, Connection>,
    of: &'a ConnRef,
}

impl Deref for ConnGuard<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.guard
    }
}

impl DerefMut for ConnGuard<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.guard
    }
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        if !self.of.cell.queued.swap(true, Ordering::AcqRel) {
            lock(&self.of.touched).push(self.of.id);
        }
    }
}

/// The connections of an endpoint by id.
#[derive(Debug, Default)]
pub(crate) struct Conns {
    map: FxHashMap<u32, Arc<Cell>>,
    touched: Touched,
}

impl Conns {
    pub(crate) fn get(&self, id: &u32) -> Option<MutexGuard<'_, Connection>> {
        self.map.get(id).map(|c| lock(&c.conn))
    }

    /// The same as `get`: the `&mut` only says the caller means to change it.
    pub(crate) fn get_mut(&mut self, id: &u32) -> Option<MutexGuard<'_, Connection>> {
        self.get(id)
    }

    pub(crate) fn contains_key(&self, id: &u32) -> bool {
        self.map.contains_key(id)
    }

    pub(crate) fn insert(&mut self, id: u32, conn: Connection) {
        let cell = Arc::new(Cell {
            conn: Mutex::new(conn),
            queued: AtomicBool::new(false),
            removed: AtomicBool::new(false),
        });
        if let Some(old) = self.map.insert(id, cell) {
            old.removed.store(true, Ordering::Release);
        }
    }

    /// Forgets connection `id`; holders of its [`ConnRef`] find it gone.
    pub(crate) fn remove(&mut self, id: &u32) -> bool {
        match self.map.remove(id) {
            Some(c) => {
                c.removed.store(true, Ordering::Release);
                true
            }
            None => false,
        }
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &u32> + '_ {
        self.map.keys()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, MutexGuard<'_, Connection>)> + '_ {
        self.map.iter().map(|(id, c)| (*id, lock(&c.conn)))
    }

    /// The layer above's handle on connection `id`.
    pub(crate) fn share(&self, id: u32) -> Option<ConnRef> {
        let cell = self.map.get(&id)?.clone();
        Some(ConnRef {
            id,
            cell,
            touched: self.touched.clone(),
        })
    }

    /// Puts into `ids` (emptied first) the connections touched through a [`ConnRef`] since
    /// the last call. The buffers are swapped, not replaced: neither side allocates once
    /// both have grown.
    pub(crate) fn take_touched(&mut self, ids: &mut Vec<u32>) {
        ids.clear();
        std::mem::swap(ids, &mut *lock(&self.touched));
        for id in ids.iter() {
            if let Some(c) = self.map.get(id) {
                c.queued.store(false, Ordering::Release);
            }
        }
    }
}
