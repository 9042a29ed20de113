//! State with a time-to-live on both backends: expired entries are never
//! returned, reads renew when asked to, the sweep keeps state bounded over
//! a moving key set, and a checkpoint restores with its stamps.

use std::time::Duration;

use super::tests::{backends, ctx, restored_for};
use super::*;
use crate::state::ttl::StateTtl;
use crate::state::StateBackend;

fn ttl() -> StateTtl {
    StateTtl::event_time(Duration::from_millis(100))
}
fn last() -> ValueState<i64> {
    ValueState::new("last").ttl(ttl())
}
fn recent() -> ListState<i64> {
    ListState::new("recent").ttl(ttl())
}
fn tags() -> MapState<String, i64> {
    MapState::new("tags").ttl(ttl())
}
fn touched() -> ValueState<i64> {
    ValueState::new("touched").ttl(ttl().update_on_read())
}
fn forever() -> ValueState<i64> {
    ValueState::new("forever")
}

fn open(b: &StateBackend, dir: &std::path::Path, r: RestoredState) -> KeyedState {
    let states = [
        last().descriptor(),
        recent().descriptor(),
        tags().descriptor(),
        touched().descriptor(),
        forever().descriptor(),
    ];
    KeyedState::open(&ctx(b, dir, 0, 1), &states, r).unwrap()
}

/// Writes every state of `key` at the store's current time.
fn write_all(st: &mut KeyedState, key: &str, v: i64) {
    let mut s = st.scope(7, key.as_bytes()).unwrap();
    last().set(&mut s, &v).unwrap();
    recent().add(&mut s, &v).unwrap();
    tags().put(&mut s, &"a".to_string(), &v).unwrap();
    touched().set(&mut s, &v).unwrap();
    forever().set(&mut s, &v).unwrap();
}

#[test]
fn expired_state_is_never_returned() {
    for b in backends() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = open(&b, dir.path(), RestoredState::default());
        st.advance_watermark(0);
        write_all(&mut st, "k", 1);
        st.advance_watermark(60);
        {
            let mut s = st.scope(7, b"k").unwrap();
            // A second map entry, written later, lives longer.
            tags().put(&mut s, &"b".to_string(), &2).unwrap();
            assert_eq!(touched().get(&s).unwrap(), Some(1), "{b:?}: renews to 160");
        }
        st.advance_watermark(99);
        {
            let s = st.scope(7, b"k").unwrap();
            assert_eq!(last().get(&s).unwrap(), Some(1), "{b:?}: live before 100");
            assert_eq!(recent().get(&s).unwrap(), [1]);
            assert_eq!(tags().entries(&s).unwrap().len(), 2);
        }
        st.advance_watermark(100);
        {
            let mut s = st.scope(7, b"k").unwrap();
            assert_eq!(last().get(&s).unwrap(), None, "{b:?}: expired at 100");
            assert_eq!(recent().get(&s).unwrap(), Vec::<i64>::new());
            assert_eq!(tags().get(&s, &"a".to_string()).unwrap(), None);
            assert!(!tags().contains(&s, &"a".to_string()).unwrap());
            assert_eq!(tags().entries(&s).unwrap(), [("b".to_string(), 2)]);
            assert_eq!(touched().get(&s).unwrap(), Some(1), "{b:?}: read at 60");
            assert_eq!(forever().get(&s).unwrap(), Some(1), "no TTL");
            // Appending to an expired list starts a new one.
            recent().add(&mut s, &5).unwrap();
            assert_eq!(recent().get(&s).unwrap(), [5]);
        }
        st.advance_watermark(260);
        let s = st.scope(7, b"k").unwrap();
        assert_eq!(
            touched().get(&s).unwrap(),
            None,
            "{b:?}: renewed to 160 only"
        );
        assert_eq!(tags().entries(&s).unwrap(), []);
        assert_eq!(forever().get(&s).unwrap(), Some(1));
    }
}

#[test]
fn state_stays_bounded_over_a_moving_key_set() {
    for b in backends() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = open(&b, dir.path(), RestoredState::default());
        let mut most = 0;
        // 20 keys per 10 ms of event time: about 200 written within a TTL.
        for step in 0..1_000i64 {
            let t = step * 10;
            st.advance_watermark(t);
            for i in 0..20 {
                let key = format!("key-{step}-{i}");
                let mut s = st.scope(7, key.as_bytes()).unwrap();
                last().set(&mut s, &t).unwrap();
                tags().put(&mut s, &key, &t).unwrap();
            }
            st.maintain().unwrap();
            if step % 10 == 9 {
                most = most.max(st.keys(0).unwrap().len());
            }
        }
        // Sweeps every second of event time: at most about 1,000 ms + TTL
        // of keys (2,200) live at once, of the 20,000 written.
        assert!(most <= 2_400, "{b:?}: {most} keys held at once");
        assert!(most >= 200, "{b:?}: {most}: the keys of one TTL at least");
    }
}

#[test]
fn a_checkpoint_keeps_the_stamps() {
    for b in backends() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = open(&b, dir.path(), RestoredState::default());
        st.advance_watermark(0);
        write_all(&mut st, "k", 3);
        let snap = st.snapshot().unwrap();
        drop(st);
        let r = restored_for(&snap, &(0..128), dir.path(), "ttl");
        let mut st = open(&b, dir.path(), r);
        st.advance_watermark(50);
        assert_eq!(last().get(&st.scope(7, b"k").unwrap()).unwrap(), Some(3));
        st.advance_watermark(100);
        assert_eq!(last().get(&st.scope(7, b"k").unwrap()).unwrap(), None);
    }
}

#[test]
fn turning_a_ttl_on_is_refused_naming_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let b = StateBackend::Memory;
    let plain = ValueState::<i64>::new("last");
    let mut st = KeyedState::open(
        &ctx(&b, dir.path(), 0, 1),
        &[plain.descriptor()],
        RestoredState::default(),
    )
    .unwrap();
    plain.set(&mut st.scope(7, b"k").unwrap(), &1).unwrap();
    let snap = st.snapshot().unwrap();
    let r = restored_for(&snap, &(0..128), dir.path(), "on");
    let err = match KeyedState::open(&ctx(&b, dir.path(), 0, 1), &[last().descriptor()], r) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("restored a state without stamps as one with a TTL"),
    };
    assert!(err.contains("'last'") && err.contains("TTL"), "{err}");
}

#[test]
fn processing_time_ttl_follows_the_wall_clock() {
    let dir = tempfile::tempdir().unwrap();
    let short = ValueState::<i64>::new("short")
        .ttl(StateTtl::processing_time(Duration::from_millis(1_000)));
    let mut st = KeyedState::open(
        &ctx(&StateBackend::Memory, dir.path(), 0, 1),
        &[short.descriptor()],
        RestoredState::default(),
    )
    .unwrap();
    short.set(&mut st.scope(7, b"k").unwrap(), &1).unwrap();
    // The watermark is not this TTL's clock.
    st.advance_watermark(i64::MAX);
    assert_eq!(short.get(&st.scope(7, b"k").unwrap()).unwrap(), Some(1));
    std::thread::sleep(Duration::from_millis(1_100));
    assert_eq!(short.get(&st.scope(7, b"k").unwrap()).unwrap(), None);
}
