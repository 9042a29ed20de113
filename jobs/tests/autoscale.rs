//! The autoscaler end to end, driven as a user would: a coordinator with
//! short autoscaler windows, two workers, and the `tumble` Nexmark job
//! (bids per auction per 10 s window: keyed state, thousands of rows)
//! submitted with `sluice submit --autoscale 1..2`, whose paced source steps its rate up 4× and
//! back down (a schedule keyed by event number, so restores keep it), with
//! synthetic work per event so the step really loads the source. The job
//! must scale up after the step, back down after the step down, show both
//! decisions with their reasons, and write exactly the rows of an embedded
//! run of the same events.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::cluster::{sluice_bin, Cluster};
use common::{assert_exactly_once, rows, OutputWithin, RUN_LIMIT};

/// Events: 1000/s for 8 s, 4000/s for 20 s, 1000/s for 25 s.
const EVENTS: &str = "113000";
const RATE: &str = "1000";
const STEPS: &str = "4000@8000,1000@88000";
/// The source's synthetic work: at 1000 events/s (920 bids) a third of a
/// subtask, at 4000/s more than one (so 2 are needed at 70 %), and back
/// at 1000/s on 2 subtasks well under half of one.
const WORK: &str = "300us";

fn widest(s: &Value) -> Option<u64> {
    s["vertices"]
        .as_array()?
        .iter()
        .map(|v| v["parallelism"].as_u64().unwrap_or(0))
        .max()
}

fn decisions(s: &Value) -> Vec<Value> {
    s["autoscaler"]["decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_paced_job_scales_up_after_a_4x_step_and_back_down_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let nexmark = env!("CARGO_BIN_EXE_nexmark");
    // The reference: the same events, embedded, unpaced, no extra work
    // (neither changes the output).
    let reference = dir.path().join("reference");
    let out = Command::new(nexmark)
        .args([
            "--query",
            "tumble",
            "--events",
            EVENTS,
            "--parallelism",
            "2",
            "--output",
        ])
        .arg(&reference)
        .output_within(RUN_LIMIT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = rows(&reference);
    assert!(
        want.len() >= 10,
        "reference output is too small to test with"
    );

    let cluster = Cluster::start_with_args(
        dir.path(),
        2,
        2,
        &[
            // The executors spin most of a core for 20 s: on a loaded
            // 2-core machine a worker can miss a second of heartbeats,
            // which the other tests' 1 s would count as lost.
            "--heartbeat-timeout",
            "5s",
            "--autoscale-target-utilization",
            "0.7",
            "--autoscale-metric-window",
            "3s",
            "--autoscale-stabilization",
            "3s",
            "--autoscale-cooldown",
            "5s",
        ],
    );
    let submit = |extra: &[&str]| {
        Command::new(sluice_bin())
            .args([
                "submit",
                "--coordinator",
                &cluster.url(),
                "--parallelism",
                "1",
            ])
            .args(extra)
            .arg(nexmark)
            .arg("--")
            .args([
                "--query",
                "tumble",
                "--events",
                EVENTS,
                "--rate",
                RATE,
                "--rate-steps",
                STEPS,
                "--work-per-event",
                WORK,
                "--output",
                "out",
                "--checkpoint-dir",
                "ck",
                "--checkpoint-interval",
                "1s",
            ])
            .current_dir(dir.path())
            .output_within(Duration::from_secs(120))
    };
    // A range the job does not start in is refused.
    let refused = submit(&["--autoscale", "2..3"]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("outside its autoscale range 2..3"),
        "{why}"
    );
    let submitted = submit(&["--autoscale", "1..2"]);
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let job = String::from_utf8_lossy(&submitted.stdout)
        .trim()
        .to_string();
    let running = cluster.wait_state(&job, "RUNNING", Duration::from_secs(60));
    let started = Instant::now();
    assert_eq!(running["autoscaler"]["min"], 1, "{running}");
    assert_eq!(running["autoscaler"]["max"], 2, "{running}");
    assert_eq!(widest(&running), Some(1));

    // The step comes 8 s into the run; the autoscaler needs its cooldown
    // (5 s), a window (3 s) and the stabilization (3 s) before it acts,
    // then the rescale's savepoint and a new attempt. Generous bounds: a
    // loaded machine is slow, but the schedule waits for no one.
    let mut up = Value::Null;
    cluster.wait_for(Duration::from_secs(45), "the job to scale up to 2", |c| {
        let s = c.status(&job);
        let scaled = s["state"] == "RUNNING" && widest(&s) == Some(2);
        if scaled {
            up = s;
        }
        scaled
    });
    let up_after = started.elapsed();
    let d = decisions(&up);
    assert_eq!(d.len(), 1, "one decision so far: {up}");
    assert_eq!(
        (d[0]["from"].as_u64(), d[0]["to"].as_u64()),
        (Some(1), Some(2))
    );
    let reason = d[0]["reason"].as_str().unwrap_or("");
    assert!(
        reason.starts_with("scale up 1 -> 2") && reason.contains("nexmark_bids"),
        "the source drove it: {reason}"
    );
    assert!(d[0]["busy_ms_per_s"].as_u64() > Some(600), "{}", d[0]);
    assert_eq!(d[0]["target_utilization"], 0.7);
    assert!(d[0]["error"].is_null(), "{}", d[0]);
    let text = cluster.sluice(&["status", &job]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("autoscaler: 1..2, 1 decisions") && text.contains("scale up 1 -> 2"),
        "{text}"
    );

    // The step down comes at event 88,000, some 28 s of schedule in (plus
    // the pause of the rescale).
    let mut down = Value::Null;
    cluster.wait_for(
        Duration::from_secs(60),
        "the job to scale back down to 1",
        |c| {
            let s = c.status(&job);
            assert!(
                s["state"] != "FINISHED",
                "the job finished before it scaled down: {s}\n{}",
                c.logs()
            );
            let scaled =
                s["state"] == "RUNNING" && decisions(&s).len() == 2 && widest(&s) == Some(1);
            if scaled {
                down = s;
            }
            scaled
        },
    );
    let d = decisions(&down);
    assert_eq!(
        (d[1]["from"].as_u64(), d[1]["to"].as_u64()),
        (Some(2), Some(1))
    );
    let reason = d[1]["reason"].as_str().unwrap_or("");
    assert!(reason.starts_with("scale down 2 -> 1"), "{reason}");
    assert!(d[1]["time_ms"].as_i64() > d[0]["time_ms"].as_i64());

    let done = cluster.wait_state(&job, "FINISHED", Duration::from_secs(120));
    assert_eq!(done["restarts"], 0, "rescales are not failures: {done}");
    assert_eq!(
        decisions(&done).len(),
        2,
        "no flapping: one step up, one step down: {done}"
    );
    let out = dir.path().join("out");
    assert_exactly_once(&want, &rows(&out), &out, "tumble autoscaled 1 -> 2 -> 1");
    eprintln!(
        "scaled up {:.1} s after the job ran; decisions: {:#}",
        up_after.as_secs_f64(),
        done["autoscaler"]
    );
}
