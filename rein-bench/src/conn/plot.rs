//! `conn-latest.png`: connect() latency (median and p99, with the rounds' range) against the
//! number of rules, log x; no program, and the refused connect, as flat reference lines.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use crate::{
    chart::{Area, draw_legend, empty_panel, plot_error, swatch},
    conn::{
        latency::Variant,
        report::{Document, Row, count},
    },
    font::FONT,
};

const SIZE: (u32, u32) = (1200, 1300);

/// Where a row sits on the x axis: 0 rules drawn at 0.5 (a log axis has no 0).
fn x_of(row: &Row) -> Option<f64> {
    match row.variant {
        Variant::NoRule => Some(0.5),
        Variant::Rules(n) => Some(f64::from(n)),
        _ => None,
    }
}

pub fn draw(path: &Path, title: &str, doc: &Document) -> Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (top, bottom) = root.split_vertically(SIZE.1 / 2);
    latency_panel(&top, title, doc)?;
    flood_panel(&bottom, doc)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn latency_panel(root: &Area<'_>, title: &str, doc: &Document) -> Result<()> {
    let rows = &doc.latency;
    if rows.is_empty() {
        return empty_panel(root, title);
    }
    let top = rows.iter().map(|r| r.p99_ns.max).fold(100.0, f64::max);
    let x_end = rows.iter().filter_map(x_of).fold(10.0, f64::max) * 3.0;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 16))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0.3f64..x_end).log_scale(), 0.0..top * 1.1)
        .map_err(plot_error)?;
    let x_format = |x: &f64| {
        if *x < 1.0 {
            "0".to_owned()
        } else {
            count(x.round() as u32)
        }
    };
    chart
        .configure_mesh()
        .x_desc("rules in the maps (0 drawn at 0.5)")
        .y_desc("ns per connect()")
        .x_label_formatter(&x_format)
        .light_line_style(RGBColor(236, 236, 236))
        .label_style((FONT, 13))
        .draw()
        .map_err(plot_error)?;
    type Pick = fn(&Row) -> (f64, f64, f64);
    let series: [(&str, RGBColor, Pick); 2] = [
        ("median (rounds' range)", RGBColor(31, 119, 180), |r| {
            (r.median_ns.median, r.median_ns.min, r.median_ns.max)
        }),
        ("p99 (rounds' range)", RGBColor(255, 127, 14), |r| {
            (r.p99_ns.median, r.p99_ns.min, r.p99_ns.max)
        }),
    ];
    for (label, colour, pick) in series {
        let points: Vec<(f64, (f64, f64, f64))> = rows
            .iter()
            .filter_map(|r| Some((x_of(r)?, pick(r))))
            .collect();
        chart
            .draw_series(std::iter::once(PathElement::new(
                points
                    .iter()
                    .map(|&(x, (m, _, _))| (x, m))
                    .collect::<Vec<_>>(),
                colour.stroke_width(2),
            )))
            .map_err(plot_error)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&(x, (_, lo, hi))| {
                PathElement::new(vec![(x, lo), (x, hi)], colour.stroke_width(1))
            }))
            .map_err(plot_error)?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, (m, _, _))| Circle::new((x, m), 4, colour.filled())),
            )
            .map_err(plot_error)?;
    }
    let references: [(Variant, RGBColor); 2] = [
        (Variant::NoProgram, RGBColor(127, 127, 127)),
        (
            rows.iter()
                .map(|r| r.variant)
                .find(|v| matches!(v, Variant::Refused(_)))
                .unwrap_or(Variant::Refused(0)),
            RGBColor(214, 39, 40),
        ),
    ];
    for (variant, colour) in references {
        let Some(row) = rows.iter().find(|r| r.variant == variant) else {
            continue;
        };
        let y = row.median_ns.median;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.3, y), (x_end, y)],
                colour.stroke_width(2),
            )))
            .map_err(plot_error)?
            .label(format!("{} (median)", row.label))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
            });
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperLeft, 13)?;
    Ok(())
}

/// Admitted SYNs per second over the limit (left bar) and the receiving softirq CPU in cores
/// (right bar), per limiter.
fn flood_panel(area: &Area<'_>, doc: &Document) -> Result<()> {
    let rows = &doc.flood;
    let title = "SYN flood: admitted/s over the limit, and softirq CPU (cores)";
    if rows.is_empty() {
        return empty_panel(area, title);
    }
    let top = rows
        .iter()
        .map(|r| r.admitted_over_limit.median.max(r.softirq_cores.median))
        .fold(1.0, f64::max);
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    let x_format = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            labels.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 16))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..rows.len() as f64 - 0.5, 0.0..top * 1.25)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(rows.len() + 1)
        .x_label_formatter(&x_format)
        .y_desc("admitted / limit;  cores")
        .light_line_style(RGBColor(236, 236, 236))
        .label_style((FONT, 13))
        .draw()
        .map_err(plot_error)?;
    type Pick = fn(&crate::conn::flood::FloodRow) -> f64;
    let series: [(&str, RGBColor, Pick); 2] = [
        ("admitted/s / limit", RGBColor(31, 119, 180), |r| {
            r.admitted_over_limit.median
        }),
        ("softirq cores", RGBColor(214, 39, 40), |r| {
            r.softirq_cores.median
        }),
    ];
    let style = TextStyle::from((FONT, 12).into_font()).color(&BLACK);
    for (j, (label, colour, pick)) in series.into_iter().enumerate() {
        let bars: Vec<(f64, f64)> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (i as f64 - 0.4 + j as f64 * 0.4, pick(r)))
            .collect();
        chart
            .draw_series(
                bars.iter().map(|&(x, v)| {
                    Text::new(format!("{v:.2}"), (x, v + top * 0.03), style.clone())
                }),
            )
            .map_err(plot_error)?;
        chart
            .draw_series(
                bars.iter()
                    .map(|&(x, v)| Rectangle::new([(x, 0.0), (x + 0.38, v)], colour.filled())),
            )
            .map_err(plot_error)?
            .label(label)
            .legend(swatch(colour));
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 13)?;
    Ok(())
}
