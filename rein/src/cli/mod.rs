//! The command line: `lowargs` as typed, `hiargs` resolved, `output` for what rein prints.
pub mod hiargs;
pub mod lowargs;
pub mod output;
