//! The one TrueType font every plot's text is drawn with (plotters' `ab_glyph` backend: no
//! fontconfig or FreeType needed).

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::style::{FontStyle, register_font};

/// The family name plots ask for; [`load_font`] registers the file under it.
pub const FONT: &str = "sans-serif";

/// Loads the TTF at `path` for all plots. Done once, before the runs, so a missing font fails
/// early.
pub fn load_font(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "reading the plot font {} (Debian package fonts-dejavu-core, or give --font)",
            path.display()
        )
    })?;
    // plotters keeps fonts for the life of the program.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FONT, FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a usable TrueType font", path.display()))
}
