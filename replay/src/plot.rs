//! An SVG a person can look at: p50 and p99 latency per second of the run for
//! each endpoint, the tags sent each second against the rate asked, and the
//! latency histogram of tag writes.

use std::path::Path;

use plotters::prelude::*;

use crate::stats::{Endpoint, EndpointStats};

const COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];

/// Per whole second of the run: (second, p50 ms, p99 ms).
fn per_second(stats: &EndpointStats) -> Vec<(f64, f64, f64)> {
    let mut buckets: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    for (at, us) in &stats.samples {
        buckets.entry(*at as u64).or_default().push(*us);
    }
    buckets
        .into_iter()
        .map(|(s, mut v)| {
            v.sort_unstable();
            let p = |q: f64| {
                v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1000.0
            };
            (s as f64, p(0.5), p(0.99))
        })
        .collect()
}

pub fn write_svg(
    path: &Path,
    stats: &[(Endpoint, &EndpointStats)],
    sent_per_second: &[u64],
    asked: Option<f64>,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 950)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, rest) = root.split_vertically(400);
    let (middle, bottom) = rest.split_vertically(250);
    draw_rate(&middle, sent_per_second, asked)?;

    let series: Vec<_> = stats.iter().map(|(e, s)| (*e, per_second(s))).collect();
    let max_t = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let max_ms = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.2))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "latency per second (solid p99, thin p50)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_t + 1.0, 0f64..max_ms * 1.1)?;
    // No grid: it would be most of the file, and the plot is committed.
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()?;
    for (i, (endpoint, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.2)),
                color.stroke_width(2),
            ))?
            .label(endpoint.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(LineSeries::new(
            points.iter().map(|p| (p.0, p.1)),
            color.stroke_width(1),
        ))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;

    // Histogram of tag-write latency up to the 99.9th percentile, in at most
    // 60 bins; the tail is folded into the last bin.
    let tags = stats
        .iter()
        .find(|(e, _)| *e == Endpoint::Tags)
        .map(|(_, s)| *s);
    let mut us: Vec<u64> = tags
        .map(|s| s.samples.iter().map(|x| x.1).collect())
        .unwrap_or_default();
    us.sort_unstable();
    let cap_ms = (us
        .get(us.len().saturating_sub(1) * 999 / 1000)
        .copied()
        .unwrap_or(1000) as f64
        / 1000.0)
        .max(1.0);
    let bin_ms = (cap_ms / 60.0).max(0.1);
    let mut bins = vec![0u64; 61];
    for v in &us {
        bins[((*v as f64 / 1000.0 / bin_ms) as usize).min(60)] += 1;
    }
    let max_count = bins.iter().copied().max().unwrap_or(1).max(1);
    let mut hist = ChartBuilder::on(&bottom)
        .caption(
            format!("user_tags latency histogram ({bin_ms:.1} ms bins, tail in the last)"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..bin_ms * 61.0, 0f64..max_count as f64 * 1.1)?;
    hist.configure_mesh()
        .disable_mesh()
        .x_desc("ms")
        .y_desc("requests")
        .draw()?;
    hist.draw_series(bins.iter().enumerate().map(|(i, c)| {
        let x = i as f64 * bin_ms;
        Rectangle::new(
            [(x, 0.0), (x + bin_ms * 0.9, *c as f64)],
            COLORS[0].filled(),
        )
    }))?;
    root.present()?;
    Ok(())
}

/// Tags sent in each second, against the rate asked (dashed when given).
fn draw_rate<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    sent_per_second: &[u64],
    asked: Option<f64>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let max_rate = sent_per_second
        .iter()
        .map(|n| *n as f64)
        .chain(asked)
        .fold(1.0, f64::max);
    let seconds = sent_per_second.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            match asked {
                Some(rate) => format!("tags sent per second (asked: {rate:.0}/s, grey)"),
                None => "tags sent per second (as fast as possible)".to_owned(),
            },
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..seconds, 0f64..max_rate * 1.1)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("seconds")
        .y_desc("tags/s")
        .draw()?;
    if let Some(rate) = asked {
        chart.draw_series(LineSeries::new(
            [(0.0, rate), (seconds, rate)],
            RGBColor(150, 150, 150).stroke_width(2),
        ))?;
    }
    chart.draw_series(LineSeries::new(
        sent_per_second
            .iter()
            .enumerate()
            .map(|(s, n)| (s as f64, *n as f64)),
        COLORS[0].stroke_width(2),
    ))?;
    Ok(())
}
