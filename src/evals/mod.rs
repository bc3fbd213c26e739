//! Evaluations: metrics over labelled data (the suite runner and reports build on these).

pub mod metrics;
pub mod bbq;
pub mod layouts;
pub mod record;
pub mod suite;
