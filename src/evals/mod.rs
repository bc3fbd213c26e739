//! Evaluations: metrics over labelled data (the suite runner and reports build on these).

pub mod bbq;
pub mod layouts;
pub mod metrics;
pub mod predictions;
pub mod record;
pub mod suite;
