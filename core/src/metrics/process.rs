//! The standard `process_*` series (resident memory, CPU, open files), read
//! from `/proc/self` at each scrape, as the Go and Java clients export them.
//! On a system without `/proc` the series are left out.

use std::fs;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// `/proc` reports CPU time in USER_HZ, which Linux fixes at 100 for
/// user space whatever the kernel's own tick rate.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug)]
pub(super) struct ProcessCollector;

#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    open_fds: i64,
    max_fds: Option<i64>,
}

/// Fields of `/proc/self/stat` after the command name, which may itself
/// hold spaces and parentheses, so the split starts after its last `)`.
fn parse_stat(stat: &str) -> Option<(f64, i64, i64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // proc(5) numbers fields from 1 with the pid; `rest` starts at field 3.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu = (field(14)? + field(15)?) as f64 / TICKS_PER_SECOND;
    let virtual_bytes = i64::try_from(field(23)?).ok()?;
    let rss_pages = i64::try_from(field(24)?).ok()?;
    Some((cpu, virtual_bytes, rss_pages))
}

/// The soft limit in `/proc/self/limits`' "Max open files" line.
fn parse_max_fds(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `VmRSS` of `/proc/self/status`, in kB whatever the page size: the page
/// count in `stat` would need `sysconf`, which is `unsafe` to call.
fn parse_vm_rss(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn sample() -> Option<Sample> {
    let (cpu_seconds, virtual_bytes, _) = parse_stat(&fs::read_to_string("/proc/self/stat").ok()?)?;
    let resident_bytes = parse_vm_rss(&fs::read_to_string("/proc/self/status").ok()?)?;
    let open_fds = fs::read_dir("/proc/self/fd").ok()?.count() as i64;
    let max_fds = fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| parse_max_fds(&l));
    Some(Sample {
        cpu_seconds,
        resident_bytes,
        virtual_bytes,
        open_fds,
        max_fds,
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = sample() else { return Ok(()) };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent.",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size.",
                Some(Unit::Bytes),
                Some(s.resident_bytes),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size.",
                Some(Unit::Bytes),
                Some(s.virtual_bytes),
            ),
            (
                "process_open_fds",
                "Open file descriptors.",
                None,
                Some(s.open_fds),
            ),
            (
                "process_max_fds",
                "Limit of open file descriptors.",
                None,
                s.max_fds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a) b)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 \
                    1000 123456789 2048 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((3.0, 123_456_789, 2048)));
    }

    #[test]
    fn reads_limits_and_status() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t  1234 kB\n"),
            Some(1234 * 1024)
        );
    }

    #[test]
    fn samples_this_process() {
        let s = sample().expect("/proc is mounted on the test machines");
        assert!(s.resident_bytes > 0 && s.open_fds > 0, "{s:?}");
    }
}
