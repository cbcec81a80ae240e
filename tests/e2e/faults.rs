//! Hostile plugins: each is stopped within its deadline or limit, reported with a clear error,
//! and the host keeps scheduling through the native fallback.

use std::time::{Duration, Instant};

use gantry::scheduling::native;

use crate::support::{hostile_from, hostile_host, queued_host, wrapped_hostile};
use crate::synthetic::Extra;

/// Runs one cycle with the hostile plugin in `mode`; returns (fault class, reason).
fn fault(mode: &str, limits: &str) -> (Option<&'static str>, String) {
    let dir = tempfile::tempdir().unwrap();
    fault_of(hostile_host(dir.path(), mode, limits), mode)
}

/// Runs one cycle on `host` (three jobs queued, a faulting plugin); returns (class, reason).
fn fault_of(mut host: gantry::Host, mode: &str) -> (Option<&'static str>, String) {
    let start = Instant::now();
    let report = gantry::blocking::block_on(host.schedule_cycle(0.0));
    // A guard against hangs, far above any deadline used here, not a speed assertion.
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{mode} hung the host"
    );
    assert_eq!(
        report.decided_by,
        native::NAME,
        "{mode}: the fallback decides"
    );
    assert_eq!(
        report.placements.len(),
        3,
        "{mode}: the host kept scheduling"
    );
    let health = host.scheduler().unwrap().health().report();
    assert_eq!(
        (health.calls, health.faults, health.fallbacks),
        (1, 1, 1),
        "{mode}"
    );
    (report.fault, report.fallback_reason.unwrap_or_default())
}

#[test]
fn infinite_loop_hits_the_deadline() {
    let (class, reason) = fault("loop", "deadline_ms = 200");
    assert_eq!(class, Some("deadline"));
    assert!(
        reason.contains("plugin `hostile-loop` (schedule): exceeded its 200 ms deadline"),
        "{reason}"
    );
}

#[test]
fn unbounded_allocation_hits_the_memory_limit() {
    let (class, reason) = fault("alloc", "memory_mib = 32");
    assert_eq!(class, Some("memory-limit"));
    assert!(
        reason.contains("plugin `hostile-alloc` (schedule): hit its memory limit of 32 MiB"),
        "{reason}"
    );
}

#[test]
fn unbounded_recursion_traps_with_a_backtrace() {
    let (class, reason) = fault("recurse", "");
    assert_eq!(class, Some("trap"));
    assert!(
        reason.contains("plugin `hostile-recurse` (schedule): trapped"),
        "{reason}"
    );
    assert!(!reason.contains('\n'), "one line: {reason}");
    assert!(reason.contains("call stack exhausted"), "{reason}");
    assert!(
        reason.contains("recurse"),
        "backtrace names the guest function: {reason}"
    );
}

#[test]
fn a_guest_panic_reports_its_message() {
    let (class, reason) = fault("trap", "");
    assert_eq!(class, Some("panic"), "{reason}");
    assert!(
        reason.contains(
            "plugin `hostile-trap` (schedule): panicked: hostile plugin traps on purpose (at "
        ) && reason.contains("lib.rs:"),
        "{reason}"
    );
    assert!(!reason.contains('\n'), "one line: {reason}");
}

#[test]
fn wasi_exit_is_reported_as_exit_not_malformed_output() {
    let (class, reason) = fault("exit", "");
    assert_eq!(class, Some("exit"), "{reason}");
    assert_eq!(
        reason,
        "plugin `hostile-exit` (schedule): exited with status 0 (a plugin may not exit)"
    );
}

#[test]
fn an_oversized_random_request_is_a_refused_host_call() {
    let (class, reason) = fault("random-huge", "");
    assert_eq!(class, Some("host-call-refused"), "{reason}");
    assert!(
        reason.starts_with("plugin `hostile-random-huge` (schedule): a host call was refused: ")
            && reason.contains("exceeds limit"),
        "{reason}"
    );
    assert!(!reason.contains('\n'), "one line: {reason}");
}

#[test]
fn a_loop_in_configure_is_reported_as_configure() {
    let (class, reason) = fault("loop-configure", "deadline_ms = 200");
    assert_eq!(class, Some("deadline"));
    assert_eq!(
        reason,
        "plugin `hostile-loop-configure` (configure): exceeded its 200 ms deadline"
    );
}

/// Found by a review: a cold instance's `configure` and its `schedule` each had the whole
/// deadline, so a plugin slow in both took twice its deadline every cycle and was never
/// faulted. One deadline covers the whole call.
#[test]
fn setup_and_schedule_share_one_deadline() {
    let (class, reason) = fault("slow-both", "deadline_ms = 200");
    assert_eq!(class, Some("deadline"), "{reason}");
    assert_eq!(
        reason,
        "plugin `hostile-slow-both` (schedule): exceeded its 200 ms deadline"
    );
}

#[test]
fn a_huge_error_string_is_cut_like_a_log_line() {
    let (class, reason) = fault("huge-error", "memory_mib = 256\ndeadline_ms = 20000");
    assert_eq!(class, Some("guest-error"));
    assert!(reason.len() < 4096 + 200, "{} bytes", reason.len());
    assert!(
        reason.contains("more bytes cut"),
        "{}",
        &reason[reason.len() - 60..]
    );
}

#[test]
fn invalid_placement_rejects_the_whole_answer() {
    let (class, reason) = fault("invalid", "");
    assert_eq!(class, Some("invalid-answer"));
    assert!(reason.contains("gave an invalid answer"), "{reason}");
    assert!(reason.contains("does not exist"), "{reason}");
}

#[test]
fn double_booking_rejects_the_whole_answer() {
    let (class, reason) = fault("double-book", "");
    assert_eq!(class, Some("invalid-answer"));
    assert!(reason.contains("given twice"), "{reason}");
}

#[test]
fn huge_output_is_refused() {
    let (class, reason) = fault("huge-output", "memory_mib = 512\ndeadline_ms = 20000");
    assert!(
        matches!(class, Some("malformed-output") | Some("invalid-answer")),
        "{class:?}: {reason}"
    );
    assert!(reason.contains("hostile-huge-output"), "{reason}");
}

#[test]
fn guest_error_is_reported_with_its_text() {
    let (class, reason) = fault("guest-error", "");
    assert_eq!(class, Some("guest-error"));
    assert!(
        reason.contains("returned an error (internal): refusing on purpose"),
        "{reason}"
    );
}

#[test]
fn configure_refusal_is_a_guest_error() {
    let (class, reason) = fault("bad-config", "");
    assert_eq!(class, Some("guest-error"));
    assert!(reason.contains("invalid-config"), "{reason}");
}

#[test]
fn floods_of_output_and_logs_are_capped_not_fatal() {
    for mode in ["print-flood", "log-flood"] {
        let dir = tempfile::tempdir().unwrap();
        let mut host = hostile_host(dir.path(), mode, "deadline_ms = 20000");
        let report = gantry::blocking::block_on(host.schedule_cycle(0.0));
        assert_eq!(
            report.decided_by,
            format!("hostile-{mode}"),
            "{:?}",
            report.fallback_reason
        );
        assert!(report.fault.is_none());
    }
}

#[test]
fn repeated_faults_quarantine_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = hostile_host(dir.path(), "trap", "");
    for cycle in 0..5 {
        // Free everything again so each cycle has work.
        let ids: Vec<u64> = host.state().running.iter().map(|a| a.id).collect();
        for id in ids {
            host.complete(id);
        }
        for (i, gpus) in [8, 4].into_iter().enumerate() {
            let _ = host.submit(crate::support::job(&format!("c{cycle}-{i}"), 0, gpus));
        }
        let report = gantry::blocking::block_on(host.schedule_cycle(cycle as f64));
        assert_eq!(report.decided_by, native::NAME);
        assert!(
            !report.placements.is_empty(),
            "cycle {cycle} placed nothing"
        );
    }
    let health = host.scheduler().unwrap().health().report();
    assert!(health.quarantined);
    assert_eq!(health.calls, 3, "no call after quarantine");
    assert_eq!(health.faults, 3);
    assert_eq!(health.fallbacks, 5);
    host.scheduler().unwrap().health().reinstate();
    assert!(!host.scheduler().unwrap().health().is_quarantined());
}

#[test]
fn a_well_behaved_plugin_decides() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = hostile_host(dir.path(), "ok", "warm_pool = 2");
    for t in 0..3 {
        refill(&mut host, t);
        let report = gantry::blocking::block_on(host.schedule_cycle(t as f64));
        assert_eq!(report.decided_by, "hostile-ok");
    }
    assert_eq!(host.scheduler().unwrap().health().report().calls, 3);
}

#[test]
fn placement_columns_that_disagree_are_malformed_output() {
    let (class, reason) = fault("ragged", "");
    assert_eq!(class, Some("malformed-output"));
    assert!(
        reason.contains(
            "plugin `hostile-ragged` (schedule): returned malformed output: placements.gpu-count \
             sums to 2 but placements.gpus has 1 entries"
        ),
        "{reason}"
    );
}

#[test]
fn sleeping_in_a_host_call_hits_the_deadline() {
    // Epoch interruption cannot reach a guest parked in WASI; the call's timeout must.
    let (class, reason) = fault("sleep", "deadline_ms = 300");
    assert_eq!(class, Some("deadline"));
    assert!(
        reason.contains("plugin `hostile-sleep` (schedule): exceeded its 300 ms deadline"),
        "{reason}"
    );
}

#[test]
fn a_host_embedded_in_a_tokio_runtime_still_bounds_calls() {
    // An embedder awaits the cycle on its own (current-thread) runtime: the deadline still
    // holds for a plugin parked in a host call.
    let dir = tempfile::tempdir().unwrap();
    let mut host = hostile_host(dir.path(), "sleep", "deadline_ms = 300");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let report = runtime.block_on(host.schedule_cycle(0.0));
    assert_eq!(report.fault, Some("deadline"));
    assert_eq!(report.decided_by, native::NAME);
    assert_eq!(report.placements.len(), 3);
}

#[test]
fn memory_cap_holds_across_several_memories() {
    // The fixture's own 8 MiB memory and three more of 4 MiB, each touched: every memory is
    // under the 16 MiB cap, all of them together are not.
    let dir = tempfile::tempdir().unwrap();
    let wasm = wrapped_hostile(
        dir.path(),
        Extra {
            memories: 3,
            pages_each: 64,
            touch: true,
            ..Extra::default()
        },
    );
    let manifest = hostile_from(dir.path(), &wasm, "ok", "memory_mib = 16");
    let (class, reason) = fault_of(queued_host(manifest), "ok");
    assert_eq!(class, Some("memory-limit"), "{reason}");
    assert!(
        reason.contains("(instantiation): hit its memory limit of 16 MiB"),
        "{reason}"
    );

    // Within the total, the same shape runs.
    let manifest = hostile_from(&dir.path().join("roomy"), &wasm, "ok", "memory_mib = 24");
    let mut host = queued_host(manifest);
    let report = gantry::blocking::block_on(host.schedule_cycle(0.0));
    assert_eq!(
        report.decided_by, "hostile-ok",
        "{:?}",
        report.fallback_reason
    );
}

#[test]
fn components_shaped_like_componentize_py_and_js_load_under_default_limits() {
    // componentize-py: one memory, ~14 core instances; componentize-js: 10-14.
    let dir = tempfile::tempdir().unwrap();
    let wasm = wrapped_hostile(
        dir.path(),
        Extra {
            plain_instances: 11,
            ..Extra::default()
        },
    );
    let mut host = queued_host(hostile_from(dir.path(), &wasm, "ok", ""));
    let report = gantry::blocking::block_on(host.schedule_cycle(0.0));
    assert_eq!(
        report.decided_by, "hostile-ok",
        "{:?}",
        report.fallback_reason
    );

    // A manifest that allows fewer instances than the component holds: it cannot instantiate.
    let mut host = queued_host(hostile_from(
        &dir.path().join("few"),
        &wasm,
        "ok",
        "instances = 8",
    ));
    let report = gantry::blocking::block_on(host.schedule_cycle(0.0));
    assert_eq!(report.decided_by, native::NAME);
    assert!(
        report
            .fallback_reason
            .as_deref()
            .unwrap_or_default()
            .contains("instance"),
        "{:?}",
        report.fallback_reason
    );
}

#[test]
fn no_component_exceeds_the_host_wide_instance_and_memory_counts() {
    let dir = tempfile::tempdir().unwrap();
    for (name, extra, what) in [
        (
            "instances",
            Extra {
                plain_instances: 70,
                ..Extra::default()
            },
            "core module instances",
        ),
        (
            "memories",
            Extra {
                memories: 20,
                pages_each: 1,
                ..Extra::default()
            },
            "linear memories",
        ),
    ] {
        let wasm = wrapped_hostile(&dir.path().join(name), extra);
        let manifest = hostile_from(&dir.path().join(name), &wasm, "ok", "");
        let err = crate::support::host()
            .load_scheduler(&gantry::PluginSource::Path(manifest))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains(what), "{name}: {err}");
    }
}

/// Frees every GPU and queues three new jobs: each cycle has work the fallback could place.
fn refill(host: &mut gantry::Host, cycle: usize) {
    let ids: Vec<u64> = host.state().running.iter().map(|a| a.id).collect();
    for id in ids {
        host.complete(id);
    }
    for (i, gpus) in [8, 4, 2].into_iter().enumerate() {
        host.submit(crate::support::job(&format!("c{cycle}-{i}"), 0, gpus))
            .unwrap();
    }
}

#[test]
fn faults_every_other_cycle_quarantine_within_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = hostile_host(dir.path(), "alternate", "");
    for cycle in 0..12 {
        refill(&mut host, cycle);
        let report = gantry::blocking::block_on(host.schedule_cycle(cycle as f64));
        if host.scheduler().unwrap().health().is_quarantined() {
            break;
        }
        assert!(!report.placements.is_empty(), "cycle {cycle}");
    }
    let health = host.scheduler().unwrap().health().report();
    assert!(health.quarantined, "{health:?}");
    assert_eq!(health.faults, 5, "{health:?}");
    assert_eq!(
        health.quarantine_reason.as_deref(),
        Some("5 of the last 10 calls")
    );
}

#[test]
fn empty_answers_forever_are_noticed_as_no_progress() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = hostile_host(dir.path(), "empty", "");
    let mut first_fault = None;
    for cycle in 0..16 {
        refill(&mut host, cycle);
        // A cycle every ten minutes of the cycles' clock.
        let report = gantry::blocking::block_on(host.schedule_cycle(600.0 * cycle as f64));
        if report.fault == Some("no-progress") {
            first_fault.get_or_insert((cycle, report.fallback_reason.clone().unwrap()));
            assert!(!report.placements.is_empty(), "the fallback placed");
        }
    }
    let (cycle, reason) = first_fault.expect("never noticed");
    // Ten empty cycles and an hour: the tenth (t = 5400 s) is the first fault.
    assert_eq!(cycle, 9, "{reason}");
    assert!(
        reason.contains("(schedule): placed nothing for 10 cycles (5400 s)"),
        "{reason}"
    );
    let health = host.scheduler().unwrap().health().report();
    assert!(health.quarantined, "{health:?}");
    assert_eq!(health.no_progress_faults, 3);
}

#[test]
fn a_valid_answer_placing_nothing_is_fine_when_nothing_fits() {
    // The cluster is full: an empty answer is the right one, never a fault, however long.
    let dir = tempfile::tempdir().unwrap();
    let mut host = crate::support::host();
    for i in 0..4 {
        host.submit(crate::support::job(&format!("fill-{i}"), i % 2, 8))
            .unwrap();
    }
    gantry::blocking::block_on(host.schedule_cycle(0.0));
    assert_eq!(host.state().busy_gpus(), 32);
    host.load_scheduler(&gantry::PluginSource::Path(crate::support::hostile(
        dir.path(),
        "empty",
        "",
    )))
    .unwrap();
    host.submit(crate::support::job("waits", 0, 8)).unwrap();
    for t in 1..20 {
        let report = gantry::blocking::block_on(host.schedule_cycle(1000.0 * t as f64));
        assert_eq!(report.fault, None, "{:?}", report.fallback_reason);
        assert_eq!(report.decided_by, "hostile-empty");
    }
    assert_eq!(
        host.scheduler().unwrap().health().report().stalled_cycles,
        0
    );
}

#[test]
fn log_floods_are_rate_limited_per_plugin_across_calls() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    struct Count(Arc<AtomicUsize>);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.fetch_add(buf.len(), Ordering::Relaxed);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let written = Arc::new(AtomicUsize::new(0));
    let sink = written.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || Count(sink.clone()))
        .finish();
    let dir = tempfile::tempdir().unwrap();
    let mut host = hostile_host(dir.path(), "log-flood-4k", "deadline_ms = 20000");
    let start = Instant::now();
    tracing::subscriber::with_default(subscriber, || {
        for cycle in 0..10 {
            refill(&mut host, cycle);
            let report = gantry::blocking::block_on(host.schedule_cycle(cycle as f64));
            assert_eq!(report.fault, None, "{:?}", report.fallback_reason);
        }
    });
    // 1,000 events of 4 KiB per cycle: 40 MB unbounded. The allowance: a burst of 128 KiB,
    // then 16 KiB/s, plus the host's own lines.
    let allowed = 128 * 1024 + 16 * 1024 * (start.elapsed().as_secs() as usize + 1) + 64 * 1024;
    let written = written.load(Ordering::Relaxed);
    assert!(
        written < allowed,
        "{written} bytes written, {allowed} allowed"
    );
    let health = host.scheduler().unwrap().health().report();
    assert!(health.output_dropped_events >= 9_000, "{health:?}");
    assert!(health.output_dropped_bytes >= 9_000 * 4096, "{health:?}");
}

#[test]
fn time_and_randomness_are_the_hosts_choice() {
    let answer = |t: f64| {
        let dir = tempfile::tempdir().unwrap();
        let mut host = hostile_host(dir.path(), "time-random", "");
        gantry::blocking::block_on(host.schedule_cycle(t))
            .fallback_reason
            .unwrap()
    };
    let first = answer(12_345.0);
    assert!(
        first.contains("now=12345 elapsed=0 random="),
        "the simulated time, standing still: {first}"
    );
    assert_eq!(answer(12_345.0), first, "same input, same answer");
    assert_ne!(answer(12_346.0), first, "another cycle, another draw");
}

#[test]
fn a_long_deadline_cannot_stall_scheduling() {
    // The manifest allows 600 s a call; the host caps scheduler calls (10 s by default), and
    // a plugin that overran backs off: the fallback decides the next cycles without calling it.
    let dir = tempfile::tempdir().unwrap();
    let mut host = hostile_host(dir.path(), "loop", "deadline_ms = 600000");
    let start = Instant::now();
    let report = gantry::blocking::block_on(host.schedule_cycle(0.0));
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "bounded by the cap"
    );
    assert_eq!(report.fault, Some("deadline"));
    assert!(
        report
            .fallback_reason
            .as_deref()
            .unwrap()
            .contains("exceeded its 10000 ms deadline"),
        "{report:?}"
    );
    for cycle in 1..3 {
        refill(&mut host, cycle);
        let start = Instant::now();
        let report = gantry::blocking::block_on(host.schedule_cycle(cycle as f64));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no call: backing off"
        );
        assert_eq!(report.decided_by, native::NAME);
        assert!(!report.placements.is_empty());
        assert!(
            report
                .fallback_reason
                .as_deref()
                .unwrap()
                .contains("backing off"),
            "{report:?}"
        );
    }
    assert_eq!(host.scheduler().unwrap().health().report().calls, 1);
}

#[test]
fn a_plugin_loaded_by_a_loader_that_outlived_its_host_still_stops_at_its_deadline() {
    // The epoch that deadlines count used to advance only while the `Host` lived: a loader
    // cloned off it (as a daemon compiles uploads) ran plugins that looped forever once the
    // host was gone.
    let dir = tempfile::tempdir().unwrap();
    let host = crate::support::host();
    let loader = host.loader().clone();
    drop(host);
    let manifest = crate::support::hostile(dir.path(), "loop-configure", "deadline_ms = 200");
    let plugin = loader
        .load_scheduler_plugin(&gantry::PluginSource::Path(manifest))
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // The probe runs on its own thread so that a hang fails the test instead of stalling it.
    std::thread::spawn(move || {
        let _ = tx.send(gantry::blocking::block_on(plugin.probe()));
    });
    let outcome = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the looping plugin was never interrupted");
    let err = outcome.expect_err("a plugin looping in configure");
    assert!(
        err.to_string().contains("exceeded its 200 ms deadline"),
        "{err}"
    );
}
