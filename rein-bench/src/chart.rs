//! What the benchmarks' plots share: the drawing area, errors, a panel for a part that did not
//! run, and the legend box every chart draws the same way.

use anyhow::anyhow;
use plotters::{coord::Shift, prelude::*};

use crate::font::FONT;

/// A panel of a plot.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

pub fn plot_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// A panel whose part of the benchmark did not run (or measured nothing).
pub fn empty_panel(area: &Area<'_>, title: &str) -> anyhow::Result<()> {
    let style = TextStyle::from((FONT, 16).into_font()).color(&BLACK);
    area.draw_text(title, &style, (20, 10))
        .map_err(plot_error)?;
    area.draw_text("not measured in this run", &style, (20, 40))
        .map_err(plot_error)
}

/// The chart's legend at `position`, in a light box, its labels `font_size` high.
pub fn draw_legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    position: SeriesLabelPosition,
    font_size: u32,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, font_size))
        .draw()
        .map_err(plot_error)
}

/// A legend entry's swatch: a square of the series' colour.
pub fn swatch(colour: RGBColor) -> impl Fn((i32, i32)) -> Rectangle<(i32, i32)> {
    move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
}
