//! The limiter's arithmetic, free of maps and helpers: the kernel runs it on map values and
//! userspace tests it (and holds it to independent models in `rein::model`).

pub mod bucket;
pub mod conn;
pub mod share;
pub mod sketch;
pub mod take;
pub mod window;
