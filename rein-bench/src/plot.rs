//! The PNG: one column per direction, one panel per metric (goodput / limit, TCP retransmits, ping
//! under load), a group of bars per scenario with one colour per limiter. The picture widens with
//! the number of groups so that their labels (`100M churn`) do not run into each other.

use std::path::Path;

use anyhow::Result;
use plotters::{
    coord::{
        Shift,
        ranged1d::{AsRangedCoord, ValueFormatter},
    },
    prelude::*,
};
pub use rein_bench::font::load_font;
use rein_bench::{chart::plot_error, font::FONT};

use crate::{
    cli::{Limiter, Proto, Scenario, dedup},
    report::Row,
};

/// The smallest picture; wider when a panel has more groups than fit.
const SIZE: (u32, u32) = (1600, 1000);

/// Pixels a group of bars needs for its label at the axis font, and a panel for its y axis and
/// margins.
const GROUP_WIDTH: u32 = 66;
const PANEL_MARGIN: u32 = 80;

fn colour(limiter: Limiter) -> RGBColor {
    match limiter {
        Limiter::Rein => RGBColor(31, 119, 180),
        Limiter::Tbf => RGBColor(255, 127, 14),
        Limiter::Cni => RGBColor(44, 160, 44),
        Limiter::ReinCni => RGBColor(148, 103, 189),
    }
}

/// A metric drawn as one panel per direction.
struct Metric {
    title: &'static str,
    axis: &'static str,
    value: fn(&Row) -> Option<f64>,
    /// `Some(bottom)`: a log scale from `bottom`. `None`: linear from 0, with the limit (1) drawn.
    log_bottom: Option<f64>,
    /// Only TCP runs have it: UDP scenarios get no group in its panels.
    tcp_only: bool,
}

const METRICS: [Metric; 3] = [
    Metric {
        title: "goodput / limit (higher is better, TCP payload at most 0.965)",
        axis: "goodput / limit",
        value: |r| r.goodput_ratio,
        log_bottom: None,
        tcp_only: false,
    },
    Metric {
        title: "TCP retransmissions (log scale, +1)",
        axis: "retransmits + 1",
        value: |r| r.retransmits.map(|n| n as f64 + 1.0),
        log_bottom: Some(0.5),
        tcp_only: true,
    },
    Metric {
        title: "ping under TCP load, average (log scale)",
        axis: "ms",
        value: |r| r.ping_avg_ms,
        log_bottom: Some(0.01),
        tcp_only: true,
    },
];

/// Draws `rows` (for `scenarios` and `limiters`) to `path`.
pub fn draw(
    path: &Path,
    title: &str,
    rows: &[Row],
    scenarios: &[Scenario],
    limiters: &[Limiter],
) -> Result<()> {
    let directions = dedup(scenarios.iter().map(|s| s.direction).collect());
    let width = width(scenarios, directions.len());
    let root = BitMapBackend::new(path, (width, SIZE.1)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (head, body) = root.split_vertically(44);
    head.draw_text(
        title,
        &TextStyle::from((FONT, 20).into_font()).color(&BLACK),
        (16, 12),
    )
    .map_err(plot_error)?;
    legend(&head, width, limiters)?;

    let panels = body.split_evenly((METRICS.len(), directions.len().max(1)));
    for (m, metric) in METRICS.iter().enumerate() {
        for (d, &direction) in directions.iter().enumerate() {
            let groups: Vec<&Scenario> = scenarios
                .iter()
                .filter(|s| s.direction == direction)
                .filter(|s| !metric.tcp_only || s.proto == Proto::Tcp)
                .collect();
            let area = &panels[m * directions.len() + d];
            let title = format!("{direction}: {}", metric.title);
            panel(area, &title, metric, rows, &groups, limiters)?;
        }
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

/// The picture's width: [`SIZE`], or wider for the panels with the most groups.
fn width(scenarios: &[Scenario], directions: usize) -> u32 {
    let groups = scenarios
        .iter()
        .map(|s| {
            scenarios
                .iter()
                .filter(|t| t.direction == s.direction)
                .count()
        })
        .max()
        .unwrap_or(0) as u32;
    let needed = directions.max(1) as u32 * (PANEL_MARGIN + groups * GROUP_WIDTH);
    needed.max(SIZE.0)
}

/// One coloured square and name per limiter, at the right end of the title line.
fn legend(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    width: u32,
    limiters: &[Limiter],
) -> Result<()> {
    let style = TextStyle::from((FONT, 18).into_font()).color(&BLACK);
    let mut x = width as i32 - 90 * limiters.len() as i32 - 10;
    for &limiter in limiters {
        area.draw(&Rectangle::new(
            [(x, 14), (x + 16, 30)],
            colour(limiter).filled(),
        ))
        .map_err(plot_error)?;
        area.draw_text(&limiter.to_string(), &style, (x + 22, 16))
            .map_err(plot_error)?;
        x += 90;
    }
    Ok(())
}

/// The bars of one panel: for each scenario (a group centred on its index) and limiter, the
/// metric's value if the row has one.
fn bars(
    metric: &Metric,
    rows: &[Row],
    groups: &[&Scenario],
    limiters: &[Limiter],
) -> Vec<(f64, f64, f64, Limiter)> {
    let width = 0.8 / limiters.len() as f64;
    let mut out = Vec::new();
    for (i, scenario) in groups.iter().enumerate() {
        for (j, &limiter) in limiters.iter().enumerate() {
            let value = rows
                .iter()
                .find(|r| r.limiter == limiter && r.scenario() == **scenario)
                .and_then(metric.value);
            if let Some(v) = value {
                let x0 = i as f64 - 0.4 + j as f64 * width;
                out.push((x0, x0 + width, v, limiter));
            }
        }
    }
    out
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    metric: &Metric,
    rows: &[Row],
    groups: &[&Scenario],
    limiters: &[Limiter],
) -> Result<()> {
    let bars = bars(metric, rows, groups, limiters);
    let top = bars.iter().map(|b| b.2).fold(0.0, f64::max);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, (FONT, 15))
        .margin(8)
        .x_label_area_size(24)
        .y_label_area_size(56);
    match metric.log_bottom {
        Some(bottom) => {
            let y_range = (bottom..(top * 3.0).max(bottom * 100.0)).log_scale();
            chart(&mut builder, y_range, bottom, metric, groups, &bars)
        }
        None => {
            let y_range = 0.0..(top * 1.15).max(1.15);
            chart(&mut builder, y_range, 0.0, metric, groups, &bars)
        }
    }
}

/// The axes and bars (rising from `bottom`) of one panel on `y_range`, a linear or a log scale.
fn chart<Y>(
    builder: &mut ChartBuilder<'_, '_, BitMapBackend<'_>>,
    y_range: Y,
    bottom: f64,
    metric: &Metric,
    groups: &[&Scenario],
    bars: &[(f64, f64, f64, Limiter)],
) -> Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let labels: Vec<String> = groups.iter().map(|s| s.traffic_label()).collect();
    let x_format = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            labels.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let y_format = |y: &f64| short(*y);
    let x_end = groups.len() as f64 - 0.5;
    let mut chart = builder
        .build_cartesian_2d(-0.5..x_end, y_range)
        .map_err(plot_error)?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh()
        .x_labels(groups.len() + 1)
        .x_label_formatter(&x_format)
        .light_line_style(RGBColor(236, 236, 236))
        .y_desc(metric.axis)
        .label_style((FONT, 12));
    if metric.log_bottom.is_some() {
        mesh.y_label_formatter(&y_format);
    }
    mesh.draw().map_err(plot_error)?;
    if metric.log_bottom.is_none() {
        // The limit itself.
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(-0.5, 1.0), (x_end, 1.0)],
                BLACK.stroke_width(1),
            )))
            .map_err(plot_error)?;
    }
    chart
        .draw_series(bars.iter().map(|&(x0, x1, v, limiter)| {
            Rectangle::new([(x0, bottom), (x1, v)], colour(limiter).filled())
        }))
        .map_err(plot_error)?;
    Ok(())
}

/// 0.01, 0.1, 1, 10, 100, 1k, 10k, ...
fn short(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Args, Config};

    fn scenarios(argv: &[&str]) -> Vec<Scenario> {
        let mut full = vec!["rein-bench"];
        full.extend_from_slice(argv);
        Config::from_args(Args::try_parse_from(full).unwrap())
            .unwrap()
            .scenarios
    }

    #[test]
    fn wide_enough_for_every_group() {
        // 18 groups per direction: 3 rates x (3 TCP + UDP + pair + churn).
        assert_eq!(width(&scenarios(&[]), 2), 2 * (80 + 18 * 66));
        assert_eq!(width(&scenarios(&["--quick"]), 2), SIZE.0);
        assert_eq!(width(&[], 0), SIZE.0);
    }
}
