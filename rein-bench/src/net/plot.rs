//! `net-latest.png`: ns per packet against the number of rules (one panel per program, one line
//! per case), and under it the flood's delivered/limit per limiter and the sketch's
//! overestimation per width.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use crate::{
    chart::{Area, draw_legend, empty_panel, plot_error, swatch},
    font::FONT,
    net::{
        flood::{FloodRow, Limiter},
        report::{Document, count},
        sketch::ModelRow,
        testrun::{Case, Hook},
    },
};

const SIZE: (u32, u32) = (1800, 1100);

fn case_colour(case: Case) -> RGBColor {
    match case {
        Case::PassThrough => RGBColor(127, 127, 127),
        Case::NoMatch => RGBColor(31, 119, 180),
        Case::Ipv4 => RGBColor(255, 127, 14),
        Case::Ipv6 => RGBColor(44, 160, 44),
        Case::PerSourceExact => RGBColor(214, 39, 40),
        Case::PerSourceSketch => RGBColor(148, 103, 189),
    }
}

fn limiter_colour(limiter: Limiter) -> RGBColor {
    match limiter {
        Limiter::ReinXdp => RGBColor(31, 119, 180),
        Limiter::ReinTc => RGBColor(23, 190, 207),
        Limiter::TcPolice => RGBColor(214, 39, 40),
        Limiter::IfbTbf => RGBColor(255, 127, 14),
        Limiter::TbfEgress => RGBColor(188, 189, 34),
    }
}

pub fn draw(path: &Path, title: &str, doc: &Document) -> Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (head, body) = root.split_vertically(40);
    head.draw_text(
        title,
        &TextStyle::from((FONT, 18).into_font()).color(&BLACK),
        (16, 12),
    )
    .map_err(plot_error)?;
    let (top, bottom) = body.split_vertically((SIZE.1 - 40) * 11 / 20);
    let programs = top.split_evenly((1, Hook::ALL.len()));
    for (area, hook) in programs.iter().zip(Hook::ALL) {
        ns_panel(area, doc, hook)?;
    }
    let lower = bottom.split_evenly((1, 2));
    flood_panel(&lower[0], &doc.flood)?;
    sketch_panel(&lower[1], doc)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn ns_panel(area: &Area<'_>, doc: &Document, hook: Hook) -> Result<()> {
    let results = &doc.testrun;
    if results.timings.iter().all(|t| t.hook != hook) {
        return empty_panel(area, &format!("{}: ns per packet", hook.label()));
    }
    let levels = results.levels();
    let top = results
        .timings
        .iter()
        .map(|t| f64::from(t.ns))
        .fold(0.0, f64::max);
    let x_end = levels.last().copied().unwrap_or(1).max(10);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{}: ns per packet vs rules installed", hook.label()),
            (FONT, 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(
            (0.5f64..f64::from(x_end) * 2.0).log_scale(),
            0.0..(top * 1.1).max(10.0),
        )
        .map_err(plot_error)?;
    let x_format = |x: &f64| count(x.round() as u32);
    chart
        .configure_mesh()
        .x_desc("rules")
        .y_desc("ns / packet")
        .x_label_formatter(&x_format)
        .light_line_style(RGBColor(236, 236, 236))
        .label_style((FONT, 12))
        .draw()
        .map_err(plot_error)?;
    for case in Case::ALL {
        let points: Vec<(f64, f64)> = levels
            .iter()
            .filter_map(|&l| {
                results
                    .timing(hook, case, l)
                    .map(|t| (f64::from(l), f64::from(t.ns)))
            })
            .collect();
        let colour = case_colour(case);
        chart
            .draw_series(std::iter::once(PathElement::new(
                points.clone(),
                colour.stroke_width(2),
            )))
            .map_err(plot_error)?
            .label(case.label())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(plot_error)?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight, 12)?;
    Ok(())
}

fn flood_panel(area: &Area<'_>, rows: &[FloodRow]) -> Result<()> {
    if rows.iter().all(|r| r.delivered_ratio.is_none()) {
        return empty_panel(area, "UDP flood: delivered / limit");
    }
    let mut limits: Vec<u64> = rows.iter().map(|r| r.limit_pps).collect();
    limits.dedup();
    let top = rows
        .iter()
        .filter_map(|r| r.delivered_ratio)
        .fold(1.0, f64::max);
    let x_end = limits.len().max(1) as f64 - 0.5;
    // Room on the right for the legend, clear of the bars.
    let x_legend = x_end + 0.9;
    let labels: Vec<String> = limits.iter().map(|l| format!("limit {l} pps")).collect();
    let x_format = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            labels.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption(
            "UDP flood: delivered / limit (unsupported limiters have no bar)",
            (FONT, 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5..x_legend, 0.0..top * 1.2)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(limits.len() + 1)
        .x_label_formatter(&x_format)
        .y_desc("delivered / limit")
        .light_line_style(RGBColor(236, 236, 236))
        .label_style((FONT, 12))
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(-0.5, 1.0), (x_legend, 1.0)],
            BLACK.stroke_width(1),
        )))
        .map_err(plot_error)?;
    let width = 0.8 / Limiter::ALL.len() as f64;
    for (j, limiter) in Limiter::ALL.into_iter().enumerate() {
        let colour = limiter_colour(limiter);
        // (left edge, ratio) of each bar this limiter has.
        let points: Vec<(f64, f64)> = limits
            .iter()
            .enumerate()
            .filter_map(|(i, &limit)| {
                let ratio = rows
                    .iter()
                    .find(|r| r.limiter == limiter && r.limit_pps == limit)?
                    .delivered_ratio?;
                Some((i as f64 - 0.4 + j as f64 * width, ratio))
            })
            .collect();
        let style = TextStyle::from((FONT, 12).into_font()).color(&BLACK);
        chart
            .draw_series(points.iter().map(|&(x0, ratio)| {
                Text::new(
                    format!("{ratio:.3}"),
                    (x0, ratio + top * 0.04),
                    style.clone(),
                )
            }))
            .map_err(plot_error)?;
        chart
            .draw_series(points.iter().map(|&(x0, ratio)| {
                Rectangle::new([(x0, 0.0), (x0 + width, ratio)], colour.filled())
            }))
            .map_err(plot_error)?
            .label(limiter.label())
            .legend(swatch(colour));
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight, 12)?;
    Ok(())
}

/// The sketch panel's log scale starts here: a mean overestimate under 0.05 packets shows no
/// bar.
const BOTTOM: f64 = 0.05;

/// One measure of a sketch row.
type Measure = fn(&ModelRow) -> f64;

fn sketch_panel(area: &Area<'_>, doc: &Document) -> Result<()> {
    let model = &doc.sketch.model;
    if model.is_empty() {
        return empty_panel(area, "count-min sketch overestimate per source");
    }
    let top = model
        .iter()
        .map(|m| m.max_over.max(m.bound))
        .fold(1.0, f64::max);
    let x_end = model.len().max(1) as f64 - 0.5;
    let labels: Vec<String> = model
        .iter()
        .map(|m| format!("{}x{} ({} KiB)", m.width, m.depth, m.memory_bytes / 1024))
        .collect();
    let x_format = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            labels.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let packets = model.first().map_or(0, |m| m.packets);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("count-min sketch overestimate per source, {packets} packets (log scale)"),
            (FONT, 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..x_end, (BOTTOM..top * 3.0).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(model.len() + 1)
        .x_label_formatter(&x_format)
        .y_desc("packets over the exact count")
        .light_line_style(RGBColor(236, 236, 236))
        .label_style((FONT, 12))
        .draw()
        .map_err(plot_error)?;
    let series: [(&str, RGBColor, Measure); 4] = [
        ("mean", RGBColor(31, 119, 180), |m| m.mean_over),
        ("p99", RGBColor(255, 127, 14), |m| m.p99_over),
        ("max", RGBColor(214, 39, 40), |m| m.max_over),
        ("bound e/w x N", RGBColor(127, 127, 127), |m| m.bound),
    ];
    let width = 0.8 / series.len() as f64;
    for (j, (label, colour, value)) in series.into_iter().enumerate() {
        let bars: Vec<Rectangle<(f64, f64)>> = model
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let x0 = i as f64 - 0.4 + j as f64 * width;
                Rectangle::new(
                    [(x0, 0.1), (x0 + width, value(m).max(0.1))],
                    colour.filled(),
                )
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(plot_error)?
            .label(label)
            .legend(swatch(colour));
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 12)?;
    Ok(())
}
