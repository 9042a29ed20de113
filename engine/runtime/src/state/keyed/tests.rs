//! Every state kind on both backends: namespaces, clears, key iteration,
//! and snapshots restored at other parallelisms and across backends.

use super::*;
use crate::data::CheckpointId;
use crate::state::key_group::range_of;
use crate::state::rocks::RestoredDb;
use crate::state::rocks::RocksConfig;
use crate::state::snapshot::filter_key_groups;
use crate::state::{StateBackend, StateSettings};

fn ctx(backend: &StateBackend, dir: &std::path::Path, subtask: usize, p: usize) -> OperatorContext {
    OperatorContext {
        operator: "keyed-test".into(),
        subtask,
        parallelism: p,
        max_parallelism: 128,
        input_schemas: Vec::new(),
        watermark: None,
        attempt: 0,
        checkpointing: true,
        state: StateSettings {
            backend: backend.clone(),
            local_dir: dir.to_path_buf(),
        },
    }
}

/// Both backends (the heap alone in a build without `rocksdb`).
fn backends() -> Vec<StateBackend> {
    let mut all = vec![StateBackend::Memory];
    let rocks = [
        StateBackend::RocksDb(RocksConfig {
            block_cache_bytes: 1 << 20,
            write_buffer_bytes: 1 << 20,
            ..RocksConfig::default()
        }),
        // A cache of a few entries: nearly every access misses, evicts and
        // reads RocksDB.
        StateBackend::RocksDb(RocksConfig {
            cache_bytes: 600,
            block_cache_bytes: 1 << 20,
            write_buffer_bytes: 1 << 20,
        }),
    ];
    for r in rocks {
        if r.check_available().is_ok() {
            all.push(r);
        }
    }
    all
}

fn count() -> ValueState<i64> {
    ValueState::new("count")
}
fn names() -> ListState<String> {
    ListState::new("names")
}
fn seen() -> MapState<String, u32> {
    MapState::new("seen")
}
fn declared() -> Vec<StateDescriptor> {
    vec![
        count().descriptor(),
        names().descriptor(),
        seen().descriptor(),
    ]
}

fn open(
    b: &StateBackend,
    dir: &std::path::Path,
    s: usize,
    p: usize,
    r: RestoredState,
) -> KeyedState {
    KeyedState::open(&ctx(b, dir, s, p), &declared(), r).unwrap()
}

#[test]
fn value_list_and_map_states_with_namespaces() {
    for b in backends() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = open(&b, dir.path(), 0, 1, RestoredState::default());
        let mut s = st.scope(5, b"alice").unwrap();
        assert_eq!(count().get(&s).unwrap(), None);
        count().set(&mut s, &3).unwrap();
        names().add(&mut s, &"x".to_string()).unwrap();
        names()
            .add_all(&mut s, &["y".to_string(), "z".to_string()])
            .unwrap();
        seen().put(&mut s, &"a".into(), &1).unwrap();
        seen().put(&mut s, &"b".into(), &2).unwrap();
        seen().put(&mut s, &"a".into(), &7).unwrap();
        // Another namespace of the same key is separate.
        s.set_namespace(-1000);
        assert_eq!(count().get(&s).unwrap(), None);
        count().set(&mut s, &9).unwrap();
        seen().put(&mut s, &"c".into(), &3).unwrap();
        s.set_namespace(0);
        assert_eq!(count().get(&s).unwrap(), Some(3), "{b:?}");
        assert_eq!(names().get(&s).unwrap(), ["x", "y", "z"]);
        assert_eq!(seen().get(&s, &"a".into()).unwrap(), Some(7));
        assert!(seen().contains(&s, &"b".into()).unwrap());
        assert!(!seen().contains(&s, &"c".into()).unwrap());
        let mut e = seen().entries(&s).unwrap();
        e.sort();
        assert_eq!(e, [("a".to_string(), 7), ("b".to_string(), 2)]);
        seen().remove(&mut s, &"a".into()).unwrap();
        assert_eq!(seen().entries(&s).unwrap(), [("b".to_string(), 2)]);
        names().update(&mut s, &["q".to_string()]).unwrap();
        assert_eq!(names().get(&s).unwrap(), ["q"]);
        // A key that is a prefix of another does not see its state.
        let mut s2 = st.scope(5, b"alic").unwrap();
        assert_eq!(count().get(&s2).unwrap(), None);
        assert!(seen().entries(&s2).unwrap().is_empty());
        count().set(&mut s2, &1).unwrap();
        assert_eq!(
            st.keys(0).unwrap(),
            [(5, b"alic".to_vec()), (5, b"alice".to_vec())]
        );
        assert_eq!(st.keys(-1000).unwrap(), [(5, b"alice".to_vec())]);
        // Clearing a namespace leaves the others.
        let mut s = st.scope(5, b"alice").unwrap();
        s.set_namespace(-1000);
        s.clear_namespace().unwrap();
        assert_eq!(count().get(&s).unwrap(), None);
        assert!(seen().entries(&s).unwrap().is_empty());
        s.set_namespace(0);
        assert_eq!(count().get(&s).unwrap(), Some(3));
        count().clear(&mut s).unwrap();
        names().clear(&mut s).unwrap();
        seen().clear(&mut s).unwrap();
        assert_eq!(count().get(&s).unwrap(), None);
        assert!(names().get(&s).unwrap().is_empty());
        assert!(seen().entries(&s).unwrap().is_empty());
        assert!(st.keys(-1000).unwrap().is_empty());
        assert_eq!(st.keys(0).unwrap(), [(5, b"alic".to_vec())]);
    }
}

#[test]
fn misuse_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = open(
        &StateBackend::Memory,
        dir.path(),
        0,
        2,
        RestoredState::default(),
    );
    // Subtask 0 of 2 owns key groups 0..64.
    assert!(matches!(st.scope(100, b"k"), Err(Error::Internal(_))));
    let mut s = st.scope(3, b"k").unwrap();
    let wrong: ListState<i64> = ListState::new("count");
    let e = wrong.add(&mut s, &1).unwrap_err().to_string();
    assert!(e.contains("declared as a value but used as a list"), "{e}");
    let undeclared: ValueState<i64> = ValueState::new("nope");
    assert!(undeclared
        .get(&s)
        .unwrap_err()
        .to_string()
        .contains("not declared"));
    count().set(&mut s, &-1).unwrap();
    let as_string: ValueState<String> = ValueState::new("count");
    assert!(matches!(as_string.get(&s), Err(Error::State(_))));
    let dup = vec![count().descriptor(), count().descriptor()];
    let c = ctx(&StateBackend::Memory, dir.path(), 0, 1);
    assert!(KeyedState::open(&c, &dup, RestoredState::default()).is_err());
}

/// Fills one store at parallelism 1 with a value, list and map entry per
/// key in every key group, in two namespaces.
fn filled(b: &StateBackend, dir: &std::path::Path) -> KeyedState {
    let mut st = open(b, dir, 0, 1, RestoredState::default());
    for kg in 0..128usize {
        let key = format!("key-{kg}");
        let mut s = st.scope(kg, key.as_bytes()).unwrap();
        for ns in [1, 2] {
            s.set_namespace(ns);
            count().set(&mut s, &(kg as i64 * ns)).unwrap();
            names().add(&mut s, &key).unwrap();
            seen().put(&mut s, &key, &(kg as u32)).unwrap();
        }
    }
    st
}

fn check(st: &mut KeyedState, groups: Range<usize>) {
    let keys = st.keys(2).unwrap();
    assert_eq!(keys.len(), groups.len());
    for kg in groups {
        let key = format!("key-{kg}");
        let mut s = st.scope(kg, key.as_bytes()).unwrap();
        for ns in [1, 2] {
            s.set_namespace(ns);
            assert_eq!(count().get(&s).unwrap(), Some(kg as i64 * ns));
            assert_eq!(names().get(&s).unwrap(), std::slice::from_ref(&key));
            assert_eq!(seen().entries(&s).unwrap(), [(key.clone(), kg as u32)]);
        }
    }
}

/// What the checkpoint writer and restore do, without storage: heap rows
/// filtered by key group; databases copied for every overlapping subtask.
fn restored_for(
    snap: &OperatorSnapshot,
    groups: &Range<usize>,
    dir: &std::path::Path,
    tag: &str,
) -> RestoredState {
    let mut r = RestoredState {
        checkpoint: CheckpointId(1),
        entries: snap.entries.clone(),
        ..RestoredState::default()
    };
    for b in &snap.keyed {
        r.keyed.push(filter_key_groups(b, groups).unwrap());
    }
    if let Some(db) = &snap.db {
        let copy = dir.join(format!("copy-{tag}"));
        std::fs::create_dir_all(&copy).unwrap();
        for e in std::fs::read_dir(&db.dir).unwrap().flatten() {
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
        r.dbs.push(RestoredDb {
            dir: copy,
            key_groups: db.key_groups.clone(),
        });
    }
    r
}

#[test]
fn snapshots_restore_at_other_parallelism_on_either_backend() {
    for from in backends() {
        for to in backends() {
            let dir = tempfile::tempdir().unwrap();
            let mut st = filled(&from, dir.path());
            let snap = st.snapshot().unwrap();
            // Changes after the snapshot are not in it.
            let mut s = st.scope(0, b"key-0").unwrap();
            s.set_namespace(1);
            count().set(&mut s, &-5).unwrap();
            for p in [3, 2, 1] {
                for sub in 0..p {
                    let groups = range_of(sub, 128, p);
                    let r = restored_for(&snap, &groups, dir.path(), &format!("{p}-{sub}"));
                    let mut restored = open(&to, dir.path(), sub, p, r);
                    check(&mut restored, groups);
                }
            }
        }
    }
}

#[test]
fn an_empty_heap_store_snapshots_only_its_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = open(
        &StateBackend::Memory,
        dir.path(),
        0,
        1,
        RestoredState::default(),
    );
    let snap = st.snapshot().unwrap();
    assert!(snap.keyed.is_empty() && snap.db.is_none());
    assert_eq!(snap.entries.len(), 1, "the states' layouts");
}

#[test]
fn a_state_whose_type_changed_is_refused_naming_operator_and_state() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Seen {
        clicks: i64,
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    struct SeenMore {
        clicks: i64,
        pages: i64,
    }
    for b in backends() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(&b, dir.path(), 0, 1);
        let old = ValueState::<Seen>::new("seen");
        let mut st = KeyedState::open(&c, &[old.descriptor()], RestoredState::default()).unwrap();
        old.set(&mut st.scope(1, b"k").unwrap(), &Seen { clicks: 1 })
            .unwrap();
        let snap = st.snapshot().unwrap();
        // The same type restores; one with a field more is refused.
        let r = restored_for(&snap, &(0..128), dir.path(), "same");
        let mut same = KeyedState::open(&c, &[old.descriptor()], r).unwrap();
        assert_eq!(
            old.get(&same.scope(1, b"k").unwrap())
                .unwrap()
                .unwrap()
                .clicks,
            1
        );
        let new = ValueState::<SeenMore>::new("seen");
        let r = restored_for(&snap, &(0..128), dir.path(), "more");
        let e = KeyedState::open(&c, &[new.descriptor()], r)
            .err()
            .expect("a changed type is refused")
            .to_string();
        assert!(e.contains("keyed-test") && e.contains("'seen'"), "{e}");
        assert!(e.contains("clicks, pages"), "{e}");
    }
}

mod differential {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Set(usize, i64, i64),
        ClearValue(usize, i64),
        Add(usize, i64, String),
        Put(usize, i64, u8, u32),
        Remove(usize, i64, u8),
        ClearNamespace(usize, i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = 0usize..6;
        let ns = -2i64..3;
        prop_oneof![
            (key.clone(), ns.clone(), any::<i64>()).prop_map(|(k, n, v)| Op::Set(k, n, v)),
            (key.clone(), ns.clone()).prop_map(|(k, n)| Op::ClearValue(k, n)),
            (key.clone(), ns.clone(), "[a-c]{0,3}").prop_map(|(k, n, s)| Op::Add(k, n, s)),
            (key.clone(), ns.clone(), 0u8..4, any::<u32>())
                .prop_map(|(k, n, m, v)| Op::Put(k, n, m, v)),
            (key.clone(), ns.clone(), 0u8..4).prop_map(|(k, n, m)| Op::Remove(k, n, m)),
            (key, ns).prop_map(|(k, n)| Op::ClearNamespace(k, n)),
        ]
    }

    /// Keys of different lengths, some prefixes of others, in two groups.
    const KEYS: [(usize, &[u8]); 6] = [
        (1, b""),
        (1, b"a"),
        (1, b"ab"),
        (2, b"a"),
        (2, b"\xff\xff"),
        (1, b"b"),
    ];

    type Dump = Vec<(usize, i64, Option<i64>, Vec<String>, Vec<(u8, u32)>)>;
    type Keys = Vec<(usize, Vec<u8>)>;

    fn scope(st: &mut KeyedState, k: usize, ns: i64) -> KeyScope<'_> {
        let (kg, key) = KEYS[k];
        let mut s = st.scope(kg, key).unwrap();
        s.set_namespace(ns);
        s
    }

    fn apply(st: &mut KeyedState, ops: &[Op]) -> Dump {
        let (value, list) = (
            ValueState::<i64>::new("count"),
            ListState::<String>::new("names"),
        );
        let map = MapState::<u8, u32>::new("bytes");
        for o in ops {
            match o.clone() {
                Op::Set(k, n, v) => value.set(&mut scope(st, k, n), &v).unwrap(),
                Op::ClearValue(k, n) => value.clear(&mut scope(st, k, n)).unwrap(),
                Op::Add(k, n, s) => list.add(&mut scope(st, k, n), &s).unwrap(),
                Op::Put(k, n, m, v) => map.put(&mut scope(st, k, n), &m, &v).unwrap(),
                Op::Remove(k, n, m) => map.remove(&mut scope(st, k, n), &m).unwrap(),
                Op::ClearNamespace(k, n) => scope(st, k, n).clear_namespace().unwrap(),
            }
        }
        let mut dump = Dump::new();
        for k in 0..KEYS.len() {
            for n in -2..3 {
                let s = scope(st, k, n);
                let mut m = map.entries(&s).unwrap();
                m.sort();
                dump.push((k, n, value.get(&s).unwrap(), list.get(&s).unwrap(), m));
            }
        }
        dump
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Heap and RocksDB agree on every read after any sequence of writes.
        #[test]
        fn heap_and_rocksdb_agree(ops in proptest::collection::vec(op(), 0..60)) {
            let dir = tempfile::tempdir().unwrap();
            let states = vec![
                ValueState::<i64>::new("count").descriptor(),
                ListState::<String>::new("names").descriptor(),
                MapState::<u8, u32>::new("bytes").descriptor(),
            ];
            let dumps: Vec<(Dump, Vec<Keys>)> = backends()
                .iter()
                .map(|b| {
                    let c = ctx(b, dir.path(), 0, 1);
                    let mut st = KeyedState::open(&c, &states, RestoredState::default()).unwrap();
                    let d = apply(&mut st, &ops);
                    let keys = (-2..3).map(|n| st.keys(n).unwrap()).collect();
                    (d, keys)
                })
                .collect();
            prop_assert_eq!(&dumps[0], &dumps[1]);
        }
    }
}

#[test]
fn timers_fire_in_time_order_once_and_move_with_their_keys() {
    for b in backends() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = open(&b, dir.path(), 0, 1, RestoredState::default());
        for (kg, key, t) in [(7, "x", 300), (3, "y", 100), (7, "x", 100), (90, "z", -5)] {
            let mut s = st.scope(kg, key.as_bytes()).unwrap();
            s.register_timer(t).unwrap();
            // A timer is not state: clearing the namespace of its time keeps it.
            s.set_namespace(t);
            s.clear_namespace().unwrap();
        }
        let mut s = st.scope(90, b"z").unwrap();
        s.register_timer(i64::MAX).unwrap();
        s.register_timer(50).unwrap();
        s.delete_timer(50).unwrap();
        assert!(
            st.keys(100).unwrap().is_empty(),
            "timers are not keys of a namespace"
        );
        let due: Vec<(i64, usize, Vec<u8>)> = st
            .take_due_timers(100)
            .unwrap()
            .into_iter()
            .map(|t| (t.time, t.key_group, t.key))
            .collect();
        assert_eq!(
            due,
            [
                (-5, 90, b"z".to_vec()),
                (100, 3, b"y".to_vec()),
                (100, 7, b"x".to_vec())
            ],
            "{b:?}"
        );
        assert!(st.take_due_timers(100).unwrap().is_empty(), "fired once");
        // The rest survive a snapshot restored at parallelism 2.
        let snap = st.snapshot().unwrap();
        let mut left = Vec::new();
        for sub in 0..2 {
            let groups = range_of(sub, 128, 2);
            let r = restored_for(&snap, &groups, dir.path(), &format!("t{sub}"));
            let mut restored = open(&b, dir.path(), sub, 2, r);
            for t in restored.take_due_timers(i64::MAX).unwrap() {
                assert!(groups.contains(&t.key_group));
                left.push((t.time, t.key));
            }
        }
        assert_eq!(
            left,
            [(300, b"x".to_vec()), (i64::MAX, b"z".to_vec())],
            "{b:?}"
        );
    }
}
