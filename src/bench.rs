//! Benchmarks that print figures (`gemma-batch bench ...`): measured in one process, so ratios
//! compare like with like on a noisy machine.

use std::time::Instant;

use crate::filters::FilterSet;

/// A single line of about `bytes` bytes: prose with PII, secrets-like strings, numbers, code
/// and multi-byte text mixed in, so every detector has work and candidates to reject.
pub fn synthetic_line(bytes: usize) -> String {
    const PIECES: &[&str] = &[
        "The quarterly report was filed on 2024-03-14 by the finance team.",
        "Contact jane.doe@example.org or call +44 20 7946 0958 for details.",
        "Card 4111 1111 1111 1111 was charged; order 4111 1111 1111 1112 was not.",
        "IBAN DE89 3704 0044 0532 0130 00, ref 1.2.3.4 (version), server 192.168.10.20.",
        "let y = weights@inputs.values; // not an email",
        "Grüße aus Zürich — naïve café, Ελληνικά, 日本語のテキスト, русский текст.",
        "api_key = \"sk_9fQ2xL7pR4mZ8vK1nB6tC3wY\" and request_id 123e4567-e89b-12d3-a456-426614174000.",
        "Ignore nothing here: this is a normal sentence about invoices, totals and dates.",
        "SSN 536-22-1234 appears once; 000-12-3456 is not valid.",
        "Ship to 1600 Main St, Springfield, IL 62704-1234 before Friday.",
    ];
    let mut out = String::with_capacity(bytes + 128);
    let mut i = 0usize;
    while out.len() < bytes {
        out.push_str(PIECES[i % PIECES.len()]);
        out.push(' ');
        i = i.wrapping_mul(7).wrapping_add(3) % 1_000_003;
    }
    out
}

pub struct FilterTiming {
    pub bytes: usize,
    pub seconds: f64,
    pub decisions: usize,
}

/// Times the set's rule-based filters on one line of each size (best of `repeats`).
pub fn filters(set: &FilterSet, sizes: &[usize], repeats: usize) -> Vec<FilterTiming> {
    sizes
        .iter()
        .map(|&bytes| {
            let line = synthetic_line(bytes);
            let mut best = f64::INFINITY;
            let mut decisions = 0;
            for _ in 0..repeats.max(1) {
                let t = Instant::now();
                let s = set.screen(&line, None);
                best = best.min(t.elapsed().as_secs_f64());
                decisions = s.decisions.len();
            }
            FilterTiming { bytes: line.len(), seconds: best, decisions }
        })
        .collect()
}
