//! The in-process harness itself: `stop` commits the journal and lets go of
//! it, and a `TestApp` dropped without `stop` (a failing test) neither hangs
//! nor leaves the journal's writer thread running, whether its runtime goes
//! on or ends with it. One test in its own binary, so that no other test's
//! writer thread is counted.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Threads of this process named like the journal's writer.
fn writer_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("list this process's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == b24_journal::journal::WRITER_THREAD)
        .count()
}

/// Waits up to 10 s for the writer thread to show its name: a thread names
/// itself once it runs, which on a loaded machine can be after the service
/// already answers.
#[track_caller]
fn assert_one_writer(what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while writer_threads() != 1 {
        assert!(
            Instant::now() < deadline,
            "{what}: {} journal writer threads after 10 s",
            writer_threads()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to 10 s for every writer thread to end.
#[track_caller]
fn assert_writers_end(what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while writer_threads() > 0 {
        assert!(
            Instant::now() < deadline,
            "{what}: the journal writer thread still runs after 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn stop_commits_and_a_dropped_app_lets_its_writer_go() {
    let dir = tempdir();
    let ev = EventSpec::new(P1, "ONCRMDEALADD", Some("1"), 1_700_000_000);
    let rt = runtime();
    rt.block_on(async {
        let s = spawn_app(dir.path(), &[]).await;
        tokio::task::block_in_place(|| assert_one_writer("one app, one writer"));
        let (id, _) = s.store(&ev).await;
        s.stop().await;
        assert_eq!(writer_threads(), 0, "stop joins the writer");

        // What was acknowledged before `stop` is there on the next start.
        let s = spawn_app(dir.path(), &[]).await;
        assert_eq!(ids(&s.all_events(P1.member).await), vec![id]);
        // Dropped without `stop` while the runtime goes on: it shuts down
        // in the background.
        drop(s);
        tokio::task::block_in_place(|| assert_writers_end("dropped, runtime running"));
    });

    // Dropped after its runtime ended: the serve task went with the runtime.
    let other = tempdir();
    let rt = runtime();
    let s = rt.block_on(async {
        let s = spawn_app(other.path(), &[]).await;
        s.store(&ev).await;
        s
    });
    drop(rt);
    assert_writers_end("runtime dropped");
    drop(s);
}
