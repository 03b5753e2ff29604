//! A short run of the operators' replay tool against the real binary.

use crate::support::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_tool_finds_no_wrong_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let config = allezon_replay::Config {
        seed: 5,
        tags: 6_000,
        max_in_flight: 32,
        // A whole minute of event time is 60,000 tags: too long for this
        // suite; aggregates are checked in `aggregates.rs`.
        aggregate_every: 0,
        // The embedded backends answer read-your-writes, so ask for it.
        profile_freshness_s: 0.0,
        // Timing is not what this test checks: the suite runs tests in
        // parallel on a small machine, so allow far more than the 200 ms.
        tag_timeout_ms: 10_000,
        profile_timeout_ms: 10_000,
        quiet: true,
        ..allezon_replay::Config::for_target(&server.base)
    };
    let report = allezon_replay::run(config).await.unwrap();
    assert!(report.passed, "{}", allezon_replay::render(&report));
    assert_eq!(report.endpoints[0].correct, 6_000);
    assert!(report.endpoints[1].correct >= 590);
}
