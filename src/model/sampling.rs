//! Next-token selection: greedy, or seeded sampling with temperature, top-k and top-p
//! (applied in that order, as transformers does).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Sampling {
    pub temperature: f32,
    /// 0 keeps every token.
    pub top_k: usize,
    /// 1.0 keeps every token.
    pub top_p: f32,
    pub seed: u64,
}

/// Index of the largest logit; the first one on ties (as `torch.argmax`). NaN never wins; 0
/// when nothing is above minus infinity.
pub fn argmax(logits: &[f32]) -> u32 {
    // The maximum over eight independent lanes (no dependency from one element to the next,
    // so it runs several compares per cycle over a 262,144-entry vocabulary), then the first
    // position holding it.
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = logits.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            if v > *lane {
                *lane = v;
            }
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &v in lanes.iter().chain(rest) {
        if v > max {
            max = v;
        }
    }
    if max == f32::NEG_INFINITY {
        return 0;
    }
    logits.iter().position(|&v| v == max).unwrap_or(0) as u32
}

/// Draws one token. Each request owns its generator, seeded from the request's seed, so a
/// prompt samples the same tokens alone or inside any batch.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut ChaCha8Rng) -> u32 {
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // Stable sort: equal logits keep index order, so the draw is deterministic.
    order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap_or(std::cmp::Ordering::Equal));
    if s.top_k > 0 && s.top_k < order.len() {
        order.truncate(s.top_k);
    }
    let max = logits[order[0]] as f64 / s.temperature as f64;
    let mut probs: Vec<f64> = order.iter().map(|&i| (logits[i] as f64 / s.temperature as f64 - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if s.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (at least one token).
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if cum >= s.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        order.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let draw: f64 = rng.random::<f64>();
    let mut cum = 0.0;
    for (p, &i) in probs.iter().zip(&order) {
        cum += p;
        if draw < cum {
            return i as u32;
        }
    }
    *order.last().expect("at least one candidate") as u32
}

/// Log-softmax of one logit row at `index`.
pub fn log_prob(logits: &[f32], index: usize) -> f64 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    logits[index] as f64 - max - sum.ln()
}

#[cfg(test)]
mod tests {
    #[test]
    fn argmax_takes_the_first_maximum_and_never_nan() {
        use super::argmax;
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[1.0]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[f32::NAN, 2.0, 3.0, 3.0]), 2);
        for n in [7, 8, 9, 17, 1000] {
            for at in [0, n / 2, n - 1] {
                let mut v: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 20.0).collect();
                v[at] = 5.0;
                if at + 1 < n {
                    v[n - 1] = 5.0;
                }
                assert_eq!(argmax(&v), at as u32, "n {n} at {at}");
            }
        }
    }

    use super::*;
    use rand::SeedableRng;

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_reproduce() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        let s = Sampling { temperature: 1.0, top_k: 1, top_p: 1.0, seed: 7 };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        assert_eq!(sample(&logits, &s, &mut rng), 1);
        let s = Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 7 };
        let draws = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..32).map(|_| sample(&logits, &s, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }

    #[test]
    fn top_p_keeps_the_head_of_the_distribution() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.5 leaves only the first.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let s = Sampling { temperature: 1.0, top_k: 0, top_p: 0.5, seed: 1 };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert!((0..50).all(|_| sample(&logits, &s, &mut rng) == 0));
    }

    #[test]
    fn log_prob_normalises() {
        let logits = [1.0f32, 2.0, 3.0];
        let total: f64 = (0..3).map(|i| log_prob(&logits, i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }
}
