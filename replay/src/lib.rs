//! allezon-replay: proves a deployment right and fast enough before real
//! traffic reaches it.
//!
//! It sends a deterministic stream of tags (per seed), asks profile and
//! aggregate queries with the expected answer in the body (debug mode), checks
//! every answer against its own reference model, and reports, per endpoint,
//! correct, wrong, timed-out and failed requests with latency percentiles. It
//! exits non-zero on any wrong answer, timeout or error.
//!
//! ```text
//! allezon-replay --target http://127.0.0.1:8080 --tags 100000 --rate 2000 \
//!     --report report.json --plot latency.svg
//! ```

pub mod driver;
pub mod every_cell;
pub mod lag;
pub mod model;
pub mod plot;
pub mod stats;
pub mod stream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use driver::{Driver, Plan};
use stats::{Endpoint, Report};

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Base URL of the deployment's REST API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Seed of the deterministic stream; the same seed sends the same tags.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of tags to send.
    #[arg(long, default_value_t = 100_000)]
    pub tags: u64,
    /// Tags per second; 0 or omitted: as fast as --max-in-flight allows.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Pass even if the tags went out slower than --rate (by default a run
    /// that could not send at the asked rate fails: it did not test it).
    #[arg(long)]
    pub allow_slow: bool,
    /// Most requests in flight at once.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// One profile query per this many tags (0: none).
    #[arg(long, default_value_t = 10)]
    pub profile_every: u64,
    /// One aggregate query per this many tags (0: none).
    #[arg(long, default_value_t = 1000)]
    pub aggregate_every: u64,
    /// Seconds after its acknowledgement a tag must show in profiles (the
    /// contract says 10; 0 demands read-your-writes).
    #[arg(long, default_value_t = 10.0)]
    pub profile_freshness_s: f64,
    /// Seconds after its acknowledgement a tag must be counted (contract: 60).
    #[arg(long, default_value_t = 60.0)]
    pub aggregate_freshness_s: f64,
    /// Milliseconds to wait for a tag's answer (contract: 200).
    #[arg(long, default_value_t = 200)]
    pub tag_timeout_ms: u64,
    /// Milliseconds to wait for a profile answer (contract: 200).
    #[arg(long, default_value_t = 200)]
    pub profile_timeout_ms: u64,
    /// Milliseconds to wait for an aggregates answer (contract: 60,000).
    #[arg(long, default_value_t = 60_000)]
    pub aggregate_timeout_ms: u64,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write the latency plot (SVG) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress bar (for logs and CI).
    #[arg(long)]
    pub quiet: bool,
    /// After the run, compare every minute of every filter combination the
    /// stream touched with the model (one query per combination and 10
    /// minutes), not only the sampled queries.
    #[arg(long)]
    pub verify_every_cell: bool,
}

/// Tags went out at least this share of the asked rate, or the run failed
/// to test that rate.
pub const RATE_TOLERANCE: f64 = 0.97;

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text.parse().map_err(|err| format!("{err}"))?;
    if !rate.is_finite() || rate < 0.0 {
        return Err("must be a number of tags per second, 0 or more (0: no limit)".into());
    }
    Ok(rate)
}

impl Config {
    /// The defaults of the command line (the contract's timeouts and
    /// freshness) aimed at `target`, for runs started from code.
    pub fn for_target(target: &str) -> Self {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            config: Config,
        }
        <Cli as clap::Parser>::parse_from(["allezon-replay", "--target", target]).config
    }
}

/// Runs the replay and returns its report; `report.passed` is false on any
/// wrong answer, timeout or error.
pub async fn run(config: Config) -> anyhow::Result<Report> {
    let plan = Plan {
        target: config.target.trim_end_matches('/').to_owned(),
        seed: config.seed,
        tags: config.tags,
        // 0 is the usual way to say "no limit".
        rate: config.rate.filter(|rate| *rate > 0.0),
        max_in_flight: config.max_in_flight,
        profile_every: config.profile_every,
        aggregate_every: config.aggregate_every,
        profile_freshness: Duration::from_secs_f64(config.profile_freshness_s),
        aggregate_freshness: Duration::from_secs_f64(config.aggregate_freshness_s),
        timeouts: [
            Duration::from_millis(config.tag_timeout_ms),
            Duration::from_millis(config.profile_timeout_ms),
            Duration::from_millis(config.aggregate_timeout_ms),
        ],
    };
    let driver = Driver::new(plan)?;
    let bar = if config.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(config.tags)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} tags {per_sec} {msg}",
        )?
        .progress_chars("=> "),
    );
    let ticker = {
        let (driver, bar) = (Arc::clone(&driver), bar.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let [t, p, a] = driver.counts();
                bar.set_message(format!(
                    "ok/bad: tags {}/{} profiles {}/{} aggregates {}/{}",
                    t.0, t.1, p.0, p.1, a.0, a.1
                ));
            }
        })
    };
    let watch = lag::Watch::start(std::time::Instant::now());
    let sends = driver.run(|sent| bar.set_position(sent)).await;
    let tool_stalls = watch.stalls();
    drop(watch);
    ticker.abort();
    bar.finish();

    let elapsed = driver.elapsed();
    let stats = driver.stats();
    let every_cell = if config.verify_every_cell {
        let settle_by =
            std::time::Instant::now() + Duration::from_secs_f64(config.aggregate_freshness_s);
        Some(
            every_cell::verify(
                driver.client(),
                config.target.trim_end_matches('/'),
                driver.stream(),
                config.tags,
                &driver.fates(),
                config.max_in_flight,
                settle_by,
            )
            .await,
        )
    } else {
        None
    };
    let endpoints: Vec<_> = Endpoint::ALL
        .iter()
        .zip(&stats)
        .map(|(e, s)| s.summary(*e, elapsed))
        .collect();
    let target_rate = config.rate.filter(|rate| *rate > 0.0);
    let achieved_rate = sends.rate();
    let too_slow = target_rate.is_some_and(|rate| achieved_rate < rate * RATE_TOLERANCE);
    let report = Report {
        target: config.target.clone(),
        seed: config.seed,
        tags: config.tags,
        target_rate,
        achieved_rate,
        too_slow,
        sent_per_second: sends.per_second.clone(),
        elapsed_s: elapsed.as_secs_f64(),
        passed: stats.iter().all(|s| !s.failed())
            && every_cell.as_ref().is_none_or(|e| e.passed())
            && (!too_slow || config.allow_slow),
        endpoints,
        every_cell,
        tool_stalls,
    };
    if let Some(path) = &config.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    if let Some(path) = &config.plot {
        let pairs: Vec<_> = Endpoint::ALL.iter().copied().zip(stats.iter()).collect();
        plot::write_svg(path, &pairs, &sends.per_second, target_rate)?;
    }
    Ok(report)
}

/// The report as a person reads it at the end of a run.
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "{} tags to {} in {:.1} s (seed {})\n{:<14} {:>9} {:>9} {:>6} {:>9} {:>6} {:>9} {:>8} {:>8} {:>8}\n",
        report.tags,
        report.target,
        report.elapsed_s,
        report.seed,
        "endpoint",
        "requests",
        "correct",
        "wrong",
        "timed out",
        "errors",
        "rate/s",
        "p50 ms",
        "p99 ms",
        "max ms"
    );
    for e in &report.endpoints {
        out.push_str(&format!(
            "{:<14} {:>9} {:>9} {:>6} {:>9} {:>6} {:>9.0} {:>8.2} {:>8.2} {:>8.2}\n",
            e.endpoint,
            e.requests,
            e.correct,
            e.wrong,
            e.timed_out,
            e.errors,
            e.rate_per_s,
            e.latency_ms.p50,
            e.latency_ms.p99,
            e.latency_ms.max
        ));
        for problem in &e.first_problems {
            out.push_str(&format!("  {}: {}\n", e.endpoint, truncate(problem, 400)));
        }
    }
    if let Some(e) = &report.every_cell {
        out.push_str(&format!(
            "every cell: {} combinations, {} queries, {} minute cells compared, {} wrong, {} errors, {:.1} s\n",
            e.combinations,
            e.queries,
            e.cells,
            e.wrong,
            e.errors,
            e.elapsed_s
        ));
        for problem in &e.first_problems {
            out.push_str(&format!("  every cell: {}\n", truncate(problem, 400)));
        }
    }
    out.push_str(&format!(
        "tool: its timers fired {} ms late at worst ({:.1} s in), {} times {} ms or more\n",
        report.tool_stalls.max_ms.round(),
        report.tool_stalls.max_at_s,
        report.tool_stalls.over_50ms,
        lag::STALL.as_millis(),
    ));
    match report.target_rate {
        Some(asked) => out.push_str(&format!(
            "rate: asked {asked:.0} tags/s, sent {:.0} tags/s{}\n",
            report.achieved_rate,
            if report.too_slow {
                " (too slow: the asked rate was not tested)"
            } else {
                ""
            }
        )),
        None => out.push_str(&format!(
            "rate: as fast as possible, sent {:.0} tags/s\n",
            report.achieved_rate
        )),
    }
    out.push_str(if report.passed {
        "PASSED\n"
    } else {
        "FAILED\n"
    });
    out
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
