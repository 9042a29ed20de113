//! Session windows: per key, a record opens [t, t + gap) and sessions that
//! overlap merge (their accumulator slots merge too). A session fires when
//! the watermark reaches its end - 1; with allowed lateness it is kept until
//! end - 1 + lateness, and a record that lands in it (or opens a session the
//! watermark already passed) fires it again at once. A record is late when
//! the session it would form is past end - 1 + lateness.

use std::collections::BTreeSet;

use arrow::array::UInt32Array;
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use hashbrown::HashMap;
use sluice_engine::data::{event_times_in_range, event_times_ms, CheckpointId, Watermark};
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Collector, Error, Operator, OperatorContext, Result};

use super::state::{output, state_batch, Keys, Slots};
use crate::snapshot::{encode_times, restored_times, without_key_group};

#[derive(Debug, Clone, Copy)]
struct Session {
    start: i64,
    end: i64,
    slot: u32,
    fired: bool,
}

/// Event-time session window aggregation.
pub(crate) struct SessionWindowOperator {
    gap: i64,
    lateness: i64,
    time: usize,
    keys: Keys,
    slots: Slots,
    output: SchemaRef,
    sessions: HashMap<u32, Vec<Session>>,
    /// (end, key, start) of sessions not yet fired.
    timers: BTreeSet<(i64, u32, i64)>,
    /// (end + lateness, key, start) of fired sessions kept for late updates.
    purges: BTreeSet<(i64, u32, i64)>,
    watermark: i64,
}

impl SessionWindowOperator {
    pub(crate) fn new(
        gap: i64,
        lateness: i64,
        time: usize,
        keys: Keys,
        slots: Slots,
        output: SchemaRef,
    ) -> Self {
        SessionWindowOperator {
            gap,
            lateness,
            time,
            keys,
            slots,
            output,
            sessions: HashMap::new(),
            timers: BTreeSet::new(),
            purges: BTreeSet::new(),
            watermark: i64::MIN,
        }
    }

    fn unschedule(&mut self, k: u32, s: &Session) {
        if s.fired {
            self.purges
                .remove(&(s.end.saturating_add(self.lateness), k, s.start));
        } else {
            self.timers.remove(&(s.end, k, s.start));
        }
    }

    fn schedule(&mut self, k: u32, s: &Session) {
        if s.fired {
            self.purges
                .insert((s.end.saturating_add(self.lateness), k, s.start));
        } else {
            self.timers.insert((s.end, k, s.start));
        }
    }

    fn emit(&self, fired: &[(u32, Session)], out: &mut Collector) -> Result<()> {
        if fired.is_empty() {
            return Ok(());
        }
        let ids: Vec<u32> = fired.iter().map(|f| f.0).collect();
        let slots: Vec<u32> = fired.iter().map(|f| f.1.slot).collect();
        let keys = self.keys.columns_of(&ids)?;
        let aggs = self.slots.evaluate(&slots)?;
        let starts = fired.iter().map(|f| f.1.start).collect();
        let ends = fired.iter().map(|f| f.1.end).collect();
        out.emit(output(&self.output, keys, starts, ends, aggs)?);
        Ok(())
    }

    fn remove(&mut self, k: u32, start: i64) -> Option<Session> {
        let list = self.sessions.get_mut(&k)?;
        let i = list.iter().position(|s| s.start == start)?;
        let s = list.remove(i);
        if list.is_empty() {
            self.sessions.remove(&k);
        }
        Some(s)
    }
}

fn resolve(redirect: &HashMap<u32, u32>, mut s: u32) -> u32 {
    while let Some(n) = redirect.get(&s) {
        s = *n;
    }
    s
}

impl Operator for SessionWindowOperator {
    /// Every session as a row: key, bounds, whether it fired, accumulators.
    fn snapshot(&mut self, _id: CheckpointId, ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        let (mut ids, mut starts, mut ends, mut fired, mut slots) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (k, list) in &self.sessions {
            for s in list {
                ids.push(*k);
                starts.push(s.start);
                ends.push(s.end);
                fired.push(s.fired as i64);
                slots.push(s.slot);
            }
        }
        let mut keyed = Vec::new();
        if !ids.is_empty() {
            keyed.push(state_batch(
                self.keys.columns_of(&ids)?,
                vec![("_start", starts), ("_end", ends), ("_fired", fired)],
                self.slots.state(&slots)?,
                ctx.max_parallelism,
            )?);
        }
        Ok(OperatorSnapshot {
            keyed,
            entries: vec![encode_times(&[self.watermark])],
            db: None,
        })
    }

    fn restore(&mut self, state: RestoredState, _ctx: &OperatorContext) -> Result<()> {
        if let Some(t) = restored_times(&state.entries, 1)? {
            self.watermark = t[0];
        }
        let nk = self.keys.width();
        for batch in &state.keyed {
            let batch = without_key_group(batch)?;
            if batch.num_columns() < nk + 3 {
                return Err(Error::Checkpoint(
                    "session state has too few columns".into(),
                ));
            }
            let cols = batch.columns();
            let ids = self.keys.intern_columns(&cols[..nk], batch.num_rows())?;
            let (starts, ends, fired) = (
                event_times_ms(&cols[nk])?,
                event_times_ms(&cols[nk + 1])?,
                event_times_ms(&cols[nk + 2])?,
            );
            let mut slots = Vec::with_capacity(ids.len());
            for (i, k) in ids.iter().enumerate() {
                let s = Session {
                    start: starts[i],
                    end: ends[i],
                    slot: self.slots.alloc(),
                    fired: fired[i] != 0,
                };
                self.keys.retain(*k);
                self.sessions.entry(*k).or_default().push(s);
                self.schedule(*k, &s);
                slots.push(s.slot);
            }
            self.slots.merge_state(&cols[nk + 3..], &slots)?;
            self.keys.forget_unused();
        }
        for list in self.sessions.values_mut() {
            list.sort_by_key(|s| s.start);
        }
        Ok(())
    }

    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let ts = event_times_in_range(&batch, self.time)?;
        let ids = self.keys.intern(&batch)?;
        let (mut rows, mut slots, mut late) = (Vec::new(), Vec::new(), Vec::new());
        let mut redirect: HashMap<u32, u32> = HashMap::new();
        let mut released = Vec::new();
        let mut refire: Vec<(u32, i64)> = Vec::new();
        for (i, (t, k)) in ts.iter().zip(&ids).enumerate() {
            let (t, k) = (*t, *k);
            let (mut start, mut end) = (t, t.saturating_add(self.gap));
            let list = self.sessions.entry(k).or_default();
            let overlapping: Vec<Session> = list
                .iter()
                .copied()
                .filter(|s| s.start < end && t < s.end)
                .collect();
            for s in &overlapping {
                start = start.min(s.start);
                end = end.max(s.end);
            }
            // Flink's rule for merging windows: late only if the merged session is.
            if end.saturating_sub(1).saturating_add(self.lateness) <= self.watermark {
                if list.is_empty() {
                    self.sessions.remove(&k);
                }
                late.push(i as u32);
                continue;
            }
            list.retain(|s| !(s.start < end && t < s.end));
            let slot = match overlapping.first() {
                Some(first) => {
                    for o in &overlapping[1..] {
                        self.slots.merge(o.slot, first.slot);
                        redirect.insert(o.slot, first.slot);
                        released.push((o.slot, k));
                    }
                    first.slot
                }
                None => {
                    self.keys.retain(k);
                    self.slots.alloc()
                }
            };
            // A session the watermark already passed (possible within allowed
            // lateness) fires at once, as Flink's EventTimeTrigger does.
            let merged = Session {
                start,
                end,
                slot,
                fired: end.saturating_sub(1) <= self.watermark,
            };
            self.sessions.entry(k).or_default().push(merged);
            for o in &overlapping {
                self.unschedule(k, o);
            }
            self.schedule(k, &merged);
            if merged.fired {
                refire.push((k, start));
            }
            rows.push(i as u32);
            slots.push(slot);
        }
        for s in &mut slots {
            *s = resolve(&redirect, *s);
        }
        self.slots.update(&batch, &rows, &slots)?;
        for (s, k) in released {
            self.slots.release(s);
            self.keys.release(k);
        }
        self.keys.forget_unused();
        if !late.is_empty() {
            out.emit_side(1, take_record_batch(&batch, &UInt32Array::from(late))?);
        }
        refire.sort_unstable();
        refire.dedup();
        let fired: Vec<(u32, Session)> = refire
            .iter()
            .filter_map(|(k, start)| {
                self.sessions
                    .get(k)?
                    .iter()
                    .find(|s| s.start == *start && s.fired)
                    .map(|s| (*k, *s))
            })
            .collect();
        self.emit(&fired, out)
    }

    fn on_watermark(
        &mut self,
        wm: Watermark,
        _ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<Option<Watermark>> {
        let Some(t) = crate::advance(&mut self.watermark, wm) else {
            return Ok(Some(wm));
        };
        let mut fired = Vec::new();
        while let Some(&(end, k, start)) = self.timers.first() {
            if end.saturating_sub(1) > t {
                break;
            }
            self.timers.pop_first();
            let Some(s) = self
                .sessions
                .get_mut(&k)
                .and_then(|l| l.iter_mut().find(|s| s.start == start))
            else {
                continue;
            };
            s.fired = true;
            let s = *s;
            fired.push((k, s));
            self.schedule(k, &s);
        }
        self.emit(&fired, out)?;
        while let Some(&(purge_at, k, start)) = self.purges.first() {
            if purge_at.saturating_sub(1) > t {
                break;
            }
            self.purges.pop_first();
            if let Some(s) = self.remove(k, start) {
                self.slots.release(s.slot);
                self.keys.release(k);
            }
        }
        Ok(Some(wm))
    }
}
