//! Session windows: per key, a record opens [t, t + gap) and sessions that
//! overlap merge (their accumulator slots merge too). A session fires when
//! the watermark reaches its end - 1; with allowed lateness it is kept until
//! end - 1 + lateness, and a record that lands in it (or opens a session the
//! watermark already passed) fires it again at once. A record is late when
//! the session it would form is past end - 1 + lateness.
//!
//! State is two tables: `sessions`, per key its sessions (bounds, whether
//! fired, an accumulator slot each) and the time of its pending timer; and
//! `timers`, `(key group, time, key)` entries ordered by time. A key has
//! one timer, at the earliest time one of its sessions must fire or be
//! dropped; a record that only extends a session leaves it alone (the
//! timer fires early, finds nothing due and is set again), so timers cost
//! about one write per session per gap rather than one per record. Both
//! tables live on the configured backend (heap, or RocksDB behind the
//! write-back cache), so session state can outgrow memory.

use arrow::array::UInt32Array;
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use hashbrown::HashMap;
use sluice_engine::data::{event_times_in_range, CheckpointId, Watermark};
use sluice_engine::state::store::StateStore;
use sluice_engine::state::table::{split_entry_key, BytesCodec, KeyRef, StateTable, ValueCodec};
use sluice_engine::state::{OperatorSnapshot, RestoredState};
use sluice_engine::{Collector, Error, Operator, OperatorContext, Result};

use super::state::{output, Slots};
use crate::snapshot::{encode_progress, restored_progress};
use crate::table_keys::TableKeys;

const SESSIONS: &str = "sessions";
/// Tags of the operator-state entries.
const PROGRESS: u8 = b'W';
const LAYOUT: u8 = b'A';
const TIMERS: &str = "timers";
/// Due timers handled at a time (bounds memory when a watermark makes very
/// many sessions due, e.g. the end of input).
const TIMER_CHUNK: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Session {
    start: i64,
    end: i64,
    slot: u32,
    fired: bool,
}

/// A key's sessions, ordered by start, and its pending timer.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    list: Vec<Session>,
    timer: Option<i64>,
}

/// When a session needs attention: its firing time, or once fired the end
/// of its allowed lateness (due when the watermark reaches the time - 1).
fn due(s: &Session, lateness: i64) -> i64 {
    if s.fired {
        s.end.saturating_add(lateness)
    } else {
        s.end
    }
}

/// Encoding: `timer flag (1 B) | timer (8 B) | count (4 B)`, then per
/// session `start | end | fired (1 B) | state length (4 B) | state`.
impl ValueCodec<Sessions> for Slots {
    fn encode(&mut self, values: &[&Sessions], out: &mut Vec<Vec<u8>>) -> Result<()> {
        let slots: Vec<u32> = values
            .iter()
            .flat_map(|v| v.list.iter().map(|s| s.slot))
            .collect();
        let mut states = Vec::with_capacity(slots.len());
        self.encode_slots(&slots, &mut states)?;
        let mut states = states.into_iter();
        for v in values {
            let mut b = Vec::with_capacity(13 + v.list.len() * 40);
            b.push(v.timer.is_some() as u8);
            b.extend_from_slice(&v.timer.unwrap_or(0).to_le_bytes());
            b.extend_from_slice(&(v.list.len() as u32).to_le_bytes());
            for s in &v.list {
                let state = states.next().ok_or_else(|| {
                    Error::Internal("session state: fewer rows than slots".into())
                })?;
                b.extend_from_slice(&s.start.to_le_bytes());
                b.extend_from_slice(&s.end.to_le_bytes());
                b.push(s.fired as u8);
                b.extend_from_slice(&(state.len() as u32).to_le_bytes());
                b.extend_from_slice(&state);
            }
            out.push(b);
        }
        Ok(())
    }

    fn decode(&mut self, bytes: &[&[u8]]) -> Result<Vec<Sessions>> {
        let bad = || Error::Checkpoint("malformed session state".into());
        let mut out = Vec::with_capacity(bytes.len());
        let mut states: Vec<&[u8]> = Vec::new();
        for b in bytes {
            let mut r = Reader(b);
            let has_timer = r.take(1).ok_or_else(bad)?[0] != 0;
            let timer = r.i64().ok_or_else(bad)?;
            let n = r.u32().ok_or_else(bad)? as usize;
            let mut list = Vec::with_capacity(n);
            for _ in 0..n {
                let start = r.i64().ok_or_else(bad)?;
                let end = r.i64().ok_or_else(bad)?;
                let fired = r.take(1).ok_or_else(bad)?[0] != 0;
                let len = r.u32().ok_or_else(bad)? as usize;
                states.push(r.take(len).ok_or_else(bad)?);
                list.push(Session {
                    start,
                    end,
                    slot: 0,
                    fired,
                });
            }
            out.push(Sessions {
                list,
                timer: has_timer.then_some(timer),
            });
        }
        let slots: Vec<u32> = states.iter().map(|_| self.alloc()).collect();
        self.merge_encoded(&states, &slots)?;
        let mut slots = slots.into_iter();
        for v in &mut out {
            for s in &mut v.list {
                s.slot = slots.next().ok_or_else(bad)?;
            }
        }
        Ok(out)
    }

    fn release(&mut self, v: Sessions) {
        for s in v.list {
            Slots::release(self, s.slot);
        }
    }

    fn weight(&self, v: &Sessions) -> usize {
        48 + v.list.len() * (40 + ValueCodec::<u32>::weight(self, &0))
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let v = self.0.get(..n)?;
        self.0 = &self.0[n..];
        Some(v)
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// What one record did to its key's sessions.
enum Placed {
    Late,
    In {
        slot: u32,
        /// Start of a fired session to emit again at once.
        refire: Option<i64>,
        /// A timer earlier than the key's pending one.
        timer: Option<i64>,
    },
}

/// Sessions fired by a watermark, waiting to be emitted.
#[derive(Default)]
struct Fired {
    keys: Vec<Box<[u8]>>,
    starts: Vec<i64>,
    ends: Vec<i64>,
    slots: Vec<u32>,
}

/// Event-time session window aggregation.
pub(crate) struct SessionWindowOperator {
    gap: i64,
    lateness: i64,
    time: usize,
    keys: TableKeys,
    slots: Slots,
    output: SchemaRef,
    store: Option<StateStore>,
    sessions: Option<StateTable<Sessions>>,
    timers: Option<StateTable<Vec<u8>>>,
    restored: RestoredState,
    watermark: i64,
}

impl SessionWindowOperator {
    pub(crate) fn new(
        gap: i64,
        lateness: i64,
        time: usize,
        key_cols: Vec<usize>,
        key_types: &[DataType],
        slots: Slots,
        output: SchemaRef,
    ) -> Result<Self> {
        Ok(SessionWindowOperator {
            gap,
            lateness,
            time,
            keys: TableKeys::new(key_cols, key_types)?,
            slots,
            output,
            store: None,
            sessions: None,
            timers: None,
            restored: RestoredState::default(),
            watermark: i64::MIN,
        })
    }

    /// The two tables and the slots they hold.
    #[allow(clippy::type_complexity)]
    fn parts(
        &mut self,
    ) -> Result<(
        &mut StateTable<Sessions>,
        &mut StateTable<Vec<u8>>,
        &mut Slots,
    )> {
        match (&mut self.sessions, &mut self.timers) {
            (Some(s), Some(t)) => Ok((s, t, &mut self.slots)),
            _ => Err(Error::Internal("session window used before open".into())),
        }
    }

    fn emit(&mut self, fired: Fired, out: &mut Collector) -> Result<()> {
        if fired.keys.is_empty() {
            return Ok(());
        }
        let keys = self.keys.decode(fired.keys.iter().map(|k| &**k))?;
        let aggs = self.slots.evaluate(&fired.slots)?;
        out.emit(output(&self.output, keys, fired.starts, fired.ends, aggs)?);
        Ok(())
    }

    /// Places the record at `t` among `list`'s sessions.
    #[allow(clippy::too_many_arguments)]
    fn place(
        list: &mut Sessions,
        slots: &mut Slots,
        t: i64,
        (gap, lateness, watermark): (i64, i64, i64),
        redirect: &mut HashMap<u32, u32>,
        released: &mut Vec<u32>,
    ) -> Placed {
        let (mut start, mut end) = (t, t.saturating_add(gap));
        let overlapping: Vec<Session> = list
            .list
            .iter()
            .copied()
            .filter(|s| s.start < end && t < s.end)
            .collect();
        for s in &overlapping {
            start = start.min(s.start);
            end = end.max(s.end);
        }
        // Flink's rule for merging windows: late only if the merged session is.
        if end.saturating_sub(1).saturating_add(lateness) <= watermark {
            return Placed::Late;
        }
        list.list.retain(|s| !(s.start < end && t < s.end));
        let slot = match overlapping.first() {
            Some(first) => {
                for o in &overlapping[1..] {
                    slots.merge(o.slot, first.slot);
                    redirect.insert(o.slot, first.slot);
                    released.push(o.slot);
                }
                first.slot
            }
            None => slots.alloc(),
        };
        // A session the watermark already passed (possible within allowed
        // lateness) fires at once, as Flink's EventTimeTrigger does.
        let merged = Session {
            start,
            end,
            slot,
            fired: end.saturating_sub(1) <= watermark,
        };
        let at = list.list.partition_point(|s| s.start < start);
        list.list.insert(at, merged);
        let d = due(&merged, lateness);
        let timer = if list.timer.is_none_or(|p| d < p) {
            list.timer = Some(d);
            Some(d)
        } else {
            None
        };
        Placed::In {
            slot,
            refire: merged.fired.then_some(start),
            timer,
        }
    }
}

fn resolve(redirect: &HashMap<u32, u32>, mut s: u32) -> u32 {
    while let Some(n) = redirect.get(&s) {
        s = *n;
    }
    s
}

impl Operator for SessionWindowOperator {
    fn open(&mut self, ctx: &OperatorContext) -> Result<()> {
        let restored = std::mem::take(&mut self.restored);
        let mut store = StateStore::open(ctx, &[SESSIONS, TIMERS], restored)?;
        self.sessions = Some(store.table(SESSIONS, &mut self.slots)?);
        self.timers = Some(store.table(TIMERS, &mut BytesCodec)?);
        self.store = Some(store);
        Ok(())
    }

    fn snapshot(&mut self, _id: CheckpointId, ctx: &OperatorContext) -> Result<OperatorSnapshot> {
        let (Some(store), Some(sessions), Some(timers)) =
            (&self.store, &mut self.sessions, &mut self.timers)
        else {
            return Err(Error::Internal("snapshot before open".into()));
        };
        let mut snap = store.snapshot();
        snap.add(sessions, &mut self.slots)?;
        snap.add(timers, &mut BytesCodec)?;
        let mut snap = snap.finish()?;
        let mut progress = vec![PROGRESS];
        progress.extend(encode_progress(&[self.watermark], ctx));
        let mut layout = vec![LAYOUT];
        layout.extend(self.slots.layout().into_bytes());
        snap.entries = vec![progress, layout];
        Ok(snap)
    }

    fn restore(&mut self, state: RestoredState, ctx: &OperatorContext) -> Result<()> {
        let mut progress = Vec::new();
        for e in &state.entries {
            match e.split_first() {
                Some((&PROGRESS, rest)) => progress.push(rest.to_vec()),
                Some((&LAYOUT, rest)) => self
                    .slots
                    .check_layout(&ctx.operator, &String::from_utf8_lossy(rest))?,
                _ => return Err(Error::Checkpoint("unknown session state entry".into())),
            }
        }
        if let Some(t) = restored_progress(&progress, 1, ctx)? {
            self.watermark = t[0];
        }
        self.restored = state;
        Ok(())
    }

    fn process(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        ctx: &OperatorContext,
        out: &mut Collector,
    ) -> Result<()> {
        let ts = event_times_in_range(&batch, self.time)?;
        let keys = self.keys.encode(&batch, ctx.max_parallelism)?;
        let params = (self.gap, self.lateness, self.watermark);
        let (sessions, timers) = match (&mut self.sessions, &mut self.timers) {
            (Some(s), Some(t)) => (s, t),
            _ => return Err(Error::Internal("session window used before open".into())),
        };
        let handles = sessions.upsert_many(
            &mut self.slots,
            (0..ts.len()).map(|i| Some(KeyRef::new(keys.groups[i], 0, keys.key(i)))),
            |_| Ok(Sessions::default()),
        )?;
        let (mut rows, mut slots, mut late) = (Vec::new(), Vec::new(), Vec::new());
        let mut redirect: HashMap<u32, u32> = HashMap::new();
        let mut released = Vec::new();
        let mut refire: Vec<(u32, i64, usize)> = Vec::new();
        let mut new_timers: Vec<(usize, i64)> = Vec::new();
        for (i, t) in ts.iter().enumerate() {
            let h = handles[i].ok_or_else(|| Error::Internal("session upsert".into()))?;
            let placed = sessions.update(h, &mut self.slots, |list, s| {
                Self::place(list, s, *t, params, &mut redirect, &mut released)
            });
            match placed {
                Placed::Late => late.push(i as u32),
                Placed::In {
                    slot,
                    refire: r,
                    timer,
                } => {
                    rows.push(i as u32);
                    slots.push(slot);
                    if let Some(start) = r {
                        refire.push((h, start, i));
                    }
                    if let Some(when) = timer {
                        new_timers.push((i, when));
                    }
                }
            }
        }
        for s in &mut slots {
            *s = resolve(&redirect, *s);
        }
        self.slots.update(&batch, &rows, &slots)?;
        for s in released {
            self.slots.release(s);
        }
        for (i, when) in new_timers {
            timers.put(
                &mut BytesCodec,
                KeyRef::new(keys.groups[i], when, keys.key(i)),
                Vec::new(),
            )?;
        }
        refire.sort_unstable_by_key(|(h, start, _)| (*h, *start));
        refire.dedup_by_key(|(h, start, _)| (*h, *start));
        let mut fired = Fired::default();
        for (h, start, i) in &refire {
            if let Some(s) = sessions
                .value(*h)
                .and_then(|l| l.list.iter().find(|s| s.start == *start && s.fired))
            {
                fired.keys.push(keys.key(*i).into());
                fired.starts.push(s.start);
                fired.ends.push(s.end);
                fired.slots.push(s.slot);
            }
        }
        // Keys whose every record was late keep no entry.
        let mut empty: Vec<u32> = handles
            .iter()
            .flatten()
            .copied()
            .filter(|h| sessions.value(*h).is_some_and(|l| l.list.is_empty()))
            .collect();
        empty.sort_unstable();
        empty.dedup();
        self.emit(fired, out)?;
        let (sessions, timers, slots) = self.parts()?;
        for h in empty {
            sessions.remove(slots, h);
        }
        sessions.maintain(slots)?;
        timers.maintain(&mut BytesCodec)?;
        if !late.is_empty() {
            out.emit_side(1, take_record_batch(&batch, &UInt32Array::from(late))?);
        }
        Ok(())
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
        let lateness = self.lateness;
        // Timers set while handling due ones may be due too: repeat.
        loop {
            let (sessions, timers) = match (&mut self.sessions, &mut self.timers) {
                (Some(s), Some(t)) => (s, t),
                _ => return Err(Error::Internal("session window used before open".into())),
            };
            let due_timers = timers.take_first(&mut BytesCodec, ..=t, TIMER_CHUNK)?;
            if due_timers.is_empty() {
                break;
            }
            let handles = sessions.get_many(
                &mut self.slots,
                due_timers.iter().map(|(k, _)| {
                    let k = split_entry_key(k);
                    Some(KeyRef::new(k.key_group, 0, k.key))
                }),
            )?;
            let mut fired = Fired::default();
            let mut purged = Vec::new();
            let mut again = Vec::new();
            let mut empty = Vec::new();
            for ((k, _), h) in due_timers.iter().zip(handles) {
                let Some(h) = h else { continue };
                let k = split_entry_key(k);
                let next = sessions.update(h, &mut self.slots, |list, _| {
                    if list.timer != Some(k.namespace) {
                        return None; // superseded by an earlier timer
                    }
                    for s in &mut list.list {
                        if !s.fired && s.end.saturating_sub(1) <= t {
                            s.fired = true;
                            fired.keys.push(k.key.into());
                            fired.starts.push(s.start);
                            fired.ends.push(s.end);
                            fired.slots.push(s.slot);
                        }
                    }
                    list.list.retain(|s| {
                        let gone = s.fired && s.end.saturating_sub(1).saturating_add(lateness) <= t;
                        if gone {
                            purged.push(s.slot);
                        }
                        !gone
                    });
                    list.timer = list.list.iter().map(|s| due(s, lateness)).min();
                    list.timer
                });
                if let Some(n) = next {
                    again.push((k.key_group, n, k.key.to_vec()));
                }
                if sessions.value(h).is_some_and(|l| l.list.is_empty()) {
                    empty.push(h);
                }
            }
            // Evaluate before the purged slots (fired ones among them) go.
            self.emit(fired, out)?;
            for s in purged {
                self.slots.release(s);
            }
            let (sessions, timers, slots) = self.parts()?;
            empty.sort_unstable();
            empty.dedup();
            for h in empty {
                sessions.remove(slots, h);
            }
            for (kg, when, key) in again {
                timers.put(&mut BytesCodec, KeyRef::new(kg, when, &key), Vec::new())?;
            }
            sessions.maintain(slots)?;
            timers.maintain(&mut BytesCodec)?;
        }
        Ok(Some(wm))
    }
}
