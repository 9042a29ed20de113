//! Keyed state with a time-to-live: reads that never return an expired
//! entry (and delete it), writes that stamp the expiry, and the periodic
//! sweep that deletes expired entries nobody reads (see
//! [`crate::state::ttl`] for the semantics).

use super::{KeyedState, MapCodec, MapValue, Table};
use crate::error::Result;
use crate::state::table::{BytesCodec, KeyRef, Rewrite, StateTable};
use crate::state::ttl::{self, TtlUpdate};

/// Most expired entries one sweep collects before deleting them (bounds
/// the sweep's memory; the next batch's sweep goes on).
const SWEEP_CAP: usize = 65_536;

impl KeyedState {
    /// Calls `f` with the payload of value or list state `id` at `at`, if
    /// present and live; an expired entry is deleted, a live one renewed
    /// when its TTL restarts on reads.
    pub(super) fn read<R>(
        &self,
        id: usize,
        at: KeyRef<'_>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>> {
        let mut table = self.bytes(id)?;
        let Some(t) = self.states[id].ttl else {
            return Ok(table.get(&mut BytesCodec, at)?.map(|b| f(b)));
        };
        let now = self.ttl_now(&t);
        let Some(stored) = table.get(&mut BytesCodec, at)? else {
            return Ok(None);
        };
        let Some(payload) = ttl::live(stored, now)? else {
            table.delete(&mut BytesCodec, at)?;
            return Ok(None);
        };
        let r = f(payload);
        if t.update == TtlUpdate::OnReadAndWrite {
            let renewed = ttl::stamp(t.expiry(now), payload);
            table.put(&mut BytesCodec, at, renewed)?;
        }
        Ok(Some(r))
    }

    /// Writes `payload` as value or list state `id` at `at` (stamped with
    /// its expiry when the state has a TTL).
    pub(super) fn write(&self, id: usize, at: KeyRef<'_>, payload: Vec<u8>) -> Result<()> {
        let stored = match self.states[id].ttl {
            None => payload,
            Some(t) => ttl::stamp(t.expiry(self.ttl_now(&t)), &payload),
        };
        self.bytes(id)?.put(&mut BytesCodec, at, stored)
    }

    /// Deletes value or list state `id` at `at`.
    pub(super) fn delete(&self, id: usize, at: KeyRef<'_>) -> Result<()> {
        self.bytes(id)?.delete(&mut BytesCodec, at)
    }

    /// Sweeps each state with a TTL whose sweep is due (once per
    /// [`ttl::StateTtl::sweep_every`] of its time).
    pub(super) fn sweep_expired(&mut self) -> Result<()> {
        for id in 0..self.states.len() {
            let Some(t) = self.states[id].ttl else {
                continue;
            };
            let now = self.ttl_now(&t);
            if now == i64::MIN {
                continue; // event time before the first watermark
            }
            match self.next_sweep[id] {
                None => {
                    self.next_sweep[id] = Some(now.saturating_add(t.sweep_every()));
                    continue;
                }
                Some(due) if now < due => continue,
                Some(_) => {}
            }
            let complete = match self.tables[id].get_mut() {
                Table::Bytes(table) => sweep_values(table, now, t.expiry(now))?,
                Table::Map(table) => sweep_maps(table, now, t.expiry(now))?,
            };
            // A sweep cut short by its cap goes on at the next batch.
            self.next_sweep[id] = Some(if complete {
                now.saturating_add(t.sweep_every())
            } else {
                now
            });
        }
        Ok(())
    }
}

/// Deletes the expired entries of a value or list table and starts the
/// lifetime of unaged ones; whether it saw them all (else it stopped at
/// [`SWEEP_CAP`]).
fn sweep_values(table: &mut StateTable<Vec<u8>>, now: i64, expiry: i64) -> Result<bool> {
    table.rewrite(&mut BytesCodec, SWEEP_CAP, |value| {
        let (t, payload) = ttl::unstamp(value)?;
        Ok(if t == ttl::UNAGED {
            Rewrite::Put(ttl::stamp(expiry, payload))
        } else if ttl::is_live(t, now) {
            Rewrite::Keep
        } else {
            Rewrite::Delete
        })
    })
}

/// Drops the expired entries of every map of a map table (a map left
/// empty is deleted) and starts the lifetime of unaged ones; whether it
/// saw them all.
fn sweep_maps(table: &mut StateTable<MapValue>, now: i64, expiry: i64) -> Result<bool> {
    table.rewrite(&mut MapCodec, SWEEP_CAP, |map| {
        let mut kept = MapValue::new();
        let mut dirty = false;
        for (k, v) in map {
            let (t, payload) = ttl::unstamp(v)?;
            if t == ttl::UNAGED {
                kept.insert(k.clone(), ttl::stamp(expiry, payload));
                dirty = true;
            } else if ttl::is_live(t, now) {
                kept.insert(k.clone(), v.clone());
            } else {
                dirty = true;
            }
        }
        Ok(if !dirty {
            Rewrite::Keep
        } else if kept.is_empty() {
            Rewrite::Delete
        } else {
            Rewrite::Put(kept)
        })
    })
}
