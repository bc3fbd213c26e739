//! Benchmark metrics, each to its published definition, with per-item scores:
//! ANLS (DocVQA), VQA accuracy (VQAv2), exact match and normalised exact match (SQuAD
//! normalisation), ChartQA relaxed accuracy, multiple-choice accuracy, BLEU-4, ROUGE-L and
//! CIDEr-D (as in the COCO caption evaluation), and seeded bootstrap confidence intervals.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ------------------------------------------------------------------ text normalisation

/// Lower-case, strip and collapse whitespace (DocVQA's ANLS normalisation).
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// SQuAD's `normalize_answer`: lower-case, drop punctuation, drop articles, collapse spaces.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    no_punct.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).collect::<Vec<_>>().join(" ")
}

fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j + 1] + 1).min(cur[j] + 1).min(prev[j] + usize::from(ca != cb));
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

// ------------------------------------------------------------------ QA metrics

/// ANLS for one question (Biten et al., DocVQA): max over references of 1 - NL, where NL is
/// the Levenshtein distance over the longer length, and 0 when NL >= threshold (0.5).
pub fn anls(prediction: &str, references: &[String], threshold: f64) -> f64 {
    let p: Vec<char> = squash(prediction).chars().collect();
    references
        .iter()
        .map(|r| {
            let r: Vec<char> = squash(r).chars().collect();
            let longest = p.len().max(r.len());
            let nl = if longest == 0 { 0.0 } else { levenshtein(&p, &r) as f64 / longest as f64 };
            if nl < threshold { 1.0 - nl } else { 0.0 }
        })
        .fold(0.0, f64::max)
}

/// 1 if the stripped prediction equals a stripped reference.
pub fn exact_match(prediction: &str, references: &[String]) -> f64 {
    f64::from(references.iter().any(|r| r.trim() == prediction.trim()))
}

/// 1 if the SQuAD-normalised prediction equals a normalised reference.
pub fn normalized_exact_match(prediction: &str, references: &[String]) -> f64 {
    let p = normalize_answer(prediction);
    f64::from(references.iter().any(|r| normalize_answer(r) == p))
}

const VQA_PUNCT: &[char] = &[';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',', '?', '!'];

/// The VQA evaluation's contraction fixes (answers written without apostrophes).
const VQA_CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"), ("arent", "aren't"), ("cant", "can't"), ("couldve", "could've"), ("couldnt", "couldn't"),
    ("didnt", "didn't"), ("doesnt", "doesn't"), ("dont", "don't"), ("hadnt", "hadn't"), ("hasnt", "hasn't"),
    ("havent", "haven't"), ("hed", "he'd"), ("hes", "he's"), ("howd", "how'd"), ("howll", "how'll"), ("hows", "how's"),
    ("Id've", "I'd've"), ("I'dve", "I'd've"), ("Im", "I'm"), ("Ive", "I've"), ("isnt", "isn't"), ("itd", "it'd"),
    ("itll", "it'll"), ("let's", "let's"), ("maam", "ma'am"), ("mightnt", "mightn't"), ("mightve", "might've"),
    ("mustnt", "mustn't"), ("mustve", "must've"), ("neednt", "needn't"), ("notve", "not've"), ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"), ("shant", "shan't"), ("shed", "she'd"), ("shes", "she's"), ("shouldve", "should've"),
    ("shouldnt", "shouldn't"), ("somebodyd", "somebody'd"), ("somebodyll", "somebody'll"), ("somebodys", "somebody's"),
    ("someoned", "someone'd"), ("someonell", "someone'll"), ("someones", "someone's"), ("somethingd", "something'd"),
    ("somethingll", "something'll"), ("thats", "that's"), ("thered", "there'd"), ("therere", "there're"),
    ("theres", "there's"), ("theyd", "they'd"), ("theyll", "they'll"), ("theyre", "they're"), ("theyve", "they've"),
    ("twas", "'twas"), ("wasnt", "wasn't"), ("wed've", "we'd've"), ("weve", "we've"), ("werent", "weren't"),
    ("whatll", "what'll"), ("whatre", "what're"), ("whats", "what's"), ("whatve", "what've"), ("whens", "when's"),
    ("whered", "where'd"), ("wheres", "where's"), ("whereve", "where've"), ("whod", "who'd"), ("wholl", "who'll"),
    ("whos", "who's"), ("whove", "who've"), ("whyll", "why'll"), ("whyre", "why're"), ("whys", "why's"),
    ("wont", "won't"), ("wouldve", "would've"), ("wouldnt", "wouldn't"), ("yall", "y'all"), ("youd", "you'd"),
    ("youll", "you'll"), ("youre", "you're"), ("youve", "you've"),
];

/// The VQAv2 evaluation's answer normalisation: punctuation (kept inside numbers like 1,000
/// and 3.5), number words to digits, articles dropped, contractions fixed, lower case.
pub fn vqa_normalize(answer: &str) -> String {
    let text = answer.replace(['\n', '\t'], " ");
    let text = text.trim();
    // processPunctuation: a mark next to a space, or any digit,digit in the text, is
    // deleted; otherwise it becomes a space.
    let bytes: Vec<char> = text.chars().collect();
    let comma_between_digits = bytes.windows(3).any(|w| w[0].is_ascii_digit() && w[1] == ',' && w[2].is_ascii_digit());
    let mut out = text.to_string();
    for &p in VQA_PUNCT {
        let spaced = text.contains(&format!("{p} ")) || text.contains(&format!(" {p}"));
        out = out.replace(p, if spaced || comma_between_digits { "" } else { " " });
    }
    // periodStrip: a period not followed by a digit goes.
    let chars: Vec<char> = out.chars().collect();
    let out: String = chars
        .iter()
        .enumerate()
        .filter(|(i, c)| !(**c == '.' && !chars.get(i + 1).is_some_and(|n| n.is_ascii_digit())))
        .map(|(_, c)| *c)
        .collect();
    // processDigitArticle.
    let words: Vec<String> = out
        .to_lowercase()
        .split_whitespace()
        .map(|w| match w {
            "none" | "zero" => "0",
            "one" => "1",
            "two" => "2",
            "three" => "3",
            "four" => "4",
            "five" => "5",
            "six" => "6",
            "seven" => "7",
            "eight" => "8",
            "nine" => "9",
            "ten" => "10",
            other => other,
        })
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(|w| VQA_CONTRACTIONS.iter().find(|(k, _)| *k == w).map(|(_, v)| v.to_string()).unwrap_or_else(|| w.to_string()))
        .collect();
    words.join(" ")
}

/// VQA accuracy (Antol et al.; VQAv2 evaluation): min(#matching annotators / 3, 1),
/// averaged over the leave-one-out subsets of the (usually 10) annotator answers. With a
/// single reference there are no subsets, and the score is whether it matches.
pub fn vqa_accuracy(prediction: &str, references: &[String]) -> f64 {
    let p = vqa_normalize(prediction);
    let refs: Vec<String> = references.iter().map(|r| vqa_normalize(r)).collect();
    match refs.len() {
        0 => 0.0,
        1 => f64::from(refs[0] == p),
        n => {
            let total: f64 = (0..n)
                .map(|leave| {
                    let matches = refs.iter().enumerate().filter(|(i, r)| *i != leave && **r == p).count();
                    (matches as f64 / 3.0).min(1.0)
                })
                .sum();
            total / n as f64
        }
    }
}

/// ChartQA relaxed accuracy (Masry et al.): numbers within 5% relative error of the target
/// (percentages as fractions), anything else an exact case-insensitive match.
pub fn relaxed_accuracy(prediction: &str, references: &[String]) -> f64 {
    fn number(s: &str) -> Option<f64> {
        let s = s.trim();
        match s.strip_suffix('%') {
            Some(p) => p.trim().parse::<f64>().ok().map(|v| v / 100.0),
            None => s.parse::<f64>().ok(),
        }
    }
    let p = prediction.trim();
    references
        .iter()
        .map(|r| {
            let r = r.trim();
            match (number(p), number(r)) {
                // A zero target has no relative error; it falls back to text comparison.
                (Some(pv), Some(rv)) if rv != 0.0 => f64::from((pv - rv).abs() / rv.abs() <= 0.05),
                _ => f64::from(p.to_lowercase() == r.to_lowercase()),
            }
        })
        .fold(0.0, f64::max)
}

/// Which option a free-text answer picks: a letter ("B", "(b)", "B."), an index label
/// ("ans1"), or the option's text. None when it picks nothing or is ambiguous.
pub fn parse_choice(prediction: &str, options: &[String]) -> Option<usize> {
    let p = prediction.trim();
    let lower = p.to_lowercase();
    let letters: Vec<char> = ('a'..='z').take(options.len()).collect();
    let head: String = lower.trim_start_matches(['(', '[', ' ']).chars().take(2).collect();
    let mut hc = head.chars();
    if let Some(c) = hc.next() {
        if let Some(i) = letters.iter().position(|l| *l == c) {
            if hc.next().is_none_or(|n| !n.is_alphanumeric()) {
                return Some(i);
            }
        }
    }
    if let Some(rest) = lower.strip_prefix("ans") {
        if let Ok(i) = rest.trim().parse::<usize>() {
            return (i < options.len()).then_some(i);
        }
    }
    let np = normalize_answer(p);
    let hits: Vec<usize> = options.iter().enumerate().filter(|(_, o)| normalize_answer(o) == np).map(|(i, _)| i).collect();
    if hits.len() == 1 {
        return Some(hits[0]);
    }
    // The answer contains exactly one option's text.
    let contained: Vec<usize> = options
        .iter()
        .enumerate()
        .filter(|(_, o)| !normalize_answer(o).is_empty() && np.contains(&normalize_answer(o)))
        .map(|(i, _)| i)
        .collect();
    (contained.len() == 1).then(|| contained[0])
}

/// 1 if the answer picks the labelled option.
pub fn multiple_choice_accuracy(prediction: &str, options: &[String], label: usize) -> f64 {
    f64::from(parse_choice(prediction, options) == Some(label))
}

// ------------------------------------------------------------------ extraction metrics

/// 1 when the output's first JSON object has exactly the requested keys (the pipeline's
/// `extract_valid`, [`check_extract`](crate::pipeline::check_extract)), else 0.
pub fn json_valid(prediction: &str, fields: &[String]) -> f64 {
    f64::from(crate::pipeline::check_extract(prediction, fields).1)
}

/// A JSON value as the extraction metrics compare it: a string as it is, anything else as its
/// JSON text (`12`, `true`, `null`).
fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An extract item's reference values: a JSON object, or the JSON text of one.
pub fn reference_object(v: Option<&serde_json::Value>) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    use serde_json::Value;
    match v {
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(Value::String(s)) => match serde_json::from_str(s) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(format!("{s:?} is not a JSON object of reference values")),
        },
        Some(other) => Err(format!("{other} is not a JSON object of reference values")),
        None => Err("missing".into()),
    }
}

/// The share of requested fields whose extracted value equals the reference value, both as
/// strings ([`value_text`]) trimmed of white space; 0 when the output has no valid JSON object
/// ([`json_valid`] 0). A field the reference lacks is an error (the labels are incomplete).
pub fn field_exact_match(prediction: &str, fields: &[String], reference: &serde_json::Map<String, serde_json::Value>) -> Result<f64, String> {
    if let Some(f) = fields.iter().find(|f| !reference.contains_key(*f)) {
        return Err(format!("no reference value for the field {f:?}"));
    }
    let (json, valid) = crate::pipeline::check_extract(prediction, fields);
    let extracted: serde_json::Map<String, serde_json::Value> = match (json, valid) {
        (Some(j), true) => serde_json::from_str(&j).map_err(|e| e.to_string())?,
        _ => return Ok(0.0),
    };
    let same = |f: &String| extracted.get(f).is_some_and(|v| value_text(v).trim() == value_text(&reference[f]).trim());
    Ok(fields.iter().filter(|f| same(f)).count() as f64 / fields.len() as f64)
}

// ------------------------------------------------------------------ caption metrics

/// Caption tokens: lower case, punctuation removed, split on whitespace (as the COCO
/// evaluation's PTB tokenisation leaves them for these metrics).
pub fn caption_tokens(s: &str) -> Vec<String> {
    s.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() || c.is_whitespace() || c == '\'' { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<Vec<String>, usize> {
    let mut out = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *out.entry(w.to_vec()).or_insert(0) += 1;
        }
    }
    out
}

/// BLEU statistics of one candidate: clipped matches and totals per order, and lengths.
#[derive(Debug, Clone, Copy, Default)]
pub struct BleuStats {
    pub matches: [usize; 4],
    pub totals: [usize; 4],
    pub candidate_len: usize,
    /// The reference length closest to the candidate's (ties: the shorter).
    pub reference_len: usize,
}

pub fn bleu_stats(candidate: &str, references: &[String]) -> BleuStats {
    let c = caption_tokens(candidate);
    let refs: Vec<Vec<String>> = references.iter().map(|r| caption_tokens(r)).collect();
    let mut s = BleuStats { candidate_len: c.len(), ..Default::default() };
    s.reference_len = refs
        .iter()
        .map(|r| r.len())
        .min_by_key(|&l| ((l as i64 - c.len() as i64).abs(), l))
        .unwrap_or(0);
    for n in 1..=4 {
        let cand = ngrams(&c, n);
        let mut max_ref: HashMap<Vec<String>, usize> = HashMap::new();
        for r in &refs {
            for (g, k) in ngrams(r, n) {
                let e = max_ref.entry(g).or_insert(0);
                *e = (*e).max(k);
            }
        }
        s.matches[n - 1] = cand.iter().map(|(g, k)| (*k).min(*max_ref.get(g).unwrap_or(&0))).sum();
        s.totals[n - 1] = c.len().saturating_sub(n - 1);
    }
    s
}

/// Corpus BLEU-4 (Papineni et al.): geometric mean of the clipped n-gram precisions over the
/// whole corpus times the brevity penalty. 0 when an order has no match.
pub fn bleu4(stats: &[BleuStats]) -> f64 {
    let mut m = [0usize; 4];
    let mut t = [0usize; 4];
    let (mut c, mut r) = (0usize, 0usize);
    for s in stats {
        for n in 0..4 {
            m[n] += s.matches[n];
            t[n] += s.totals[n];
        }
        c += s.candidate_len;
        r += s.reference_len;
    }
    if c == 0 || m.iter().any(|&x| x == 0) {
        return 0.0;
    }
    let log_p: f64 = (0..4).map(|n| (m[n] as f64 / t[n] as f64).ln()).sum::<f64>() / 4.0;
    let bp = if c > r { 1.0 } else { (1.0 - r as f64 / c as f64).exp() };
    bp * log_p.exp()
}

/// ROUGE-L as the COCO evaluation computes it: LCS-based precision and recall (best over
/// references), F-measure with beta = 1.2.
pub fn rouge_l(candidate: &str, references: &[String]) -> f64 {
    let c = caption_tokens(candidate);
    if c.is_empty() || references.is_empty() {
        return 0.0;
    }
    let (mut best_p, mut best_r) = (0f64, 0f64);
    for r in references {
        let r = caption_tokens(r);
        if r.is_empty() {
            continue;
        }
        let mut dp = vec![vec![0usize; c.len() + 1]; r.len() + 1];
        for i in 1..=r.len() {
            for j in 1..=c.len() {
                dp[i][j] = if r[i - 1] == c[j - 1] { dp[i - 1][j - 1] + 1 } else { dp[i - 1][j].max(dp[i][j - 1]) };
            }
        }
        let lcs = dp[r.len()][c.len()] as f64;
        best_p = best_p.max(lcs / c.len() as f64);
        best_r = best_r.max(lcs / r.len() as f64);
    }
    let beta2 = 1.2f64 * 1.2;
    if best_p == 0.0 || best_r == 0.0 {
        return 0.0;
    }
    (1.0 + beta2) * best_p * best_r / (best_r + beta2 * best_p)
}

/// CIDEr-D (Vedantam et al., as in the COCO evaluation): TF-IDF n-gram vectors (n = 1..4,
/// document frequencies over the corpus's reference sets), the candidate's counts clipped by
/// each reference's, a Gaussian length penalty (sigma 6), averaged over references and
/// orders, times 10. Returns one score per item; their mean is the corpus score.
pub fn cider_d(candidates: &[String], references: &[Vec<String>]) -> Vec<f64> {
    const SIGMA: f64 = 6.0;
    type Vecs = ([HashMap<Vec<String>, f64>; 4], [f64; 4], f64);
    let counts = |s: &str| -> Vec<HashMap<Vec<String>, usize>> {
        let t = caption_tokens(s);
        (1..=4).map(|n| ngrams(&t, n)).collect()
    };
    let refs: Vec<Vec<Vec<HashMap<Vec<String>, usize>>>> =
        references.iter().map(|rs| rs.iter().map(|r| counts(r)).collect()).collect();
    let mut df: HashMap<Vec<String>, f64> = HashMap::new();
    for rs in &refs {
        let mut seen = std::collections::HashSet::new();
        for r in rs {
            for order in r {
                for g in order.keys() {
                    seen.insert(g.clone());
                }
            }
        }
        for g in seen {
            *df.entry(g).or_insert(0.0) += 1.0;
        }
    }
    let ref_len = (references.len().max(1) as f64).ln();
    let to_vec = |c: &[HashMap<Vec<String>, usize>]| -> Vecs {
        let mut vec: [HashMap<Vec<String>, f64>; 4] = Default::default();
        let mut norm = [0f64; 4];
        let mut length = 0f64;
        for (n, order) in c.iter().enumerate() {
            for (g, &tf) in order {
                let d = df.get(g).copied().unwrap_or(0.0).max(1.0).ln();
                let v = tf as f64 * (ref_len - d);
                norm[n] += v * v;
                vec[n].insert(g.clone(), v);
                // The reference implementation counts length on bigrams (n index 1).
                if n == 1 {
                    length += tf as f64;
                }
            }
        }
        (vec, norm.map(f64::sqrt), length)
    };
    candidates
        .iter()
        .zip(&refs)
        .map(|(cand, rs)| {
            if rs.is_empty() {
                return 0.0;
            }
            let (hv, hn, hl) = to_vec(&counts(cand));
            let mut total = [0f64; 4];
            for r in rs {
                let (rv, rn, rl) = to_vec(r);
                let delta = hl - rl;
                for n in 0..4 {
                    let mut val: f64 = hv[n].iter().map(|(g, v)| v.min(*rv[n].get(g).unwrap_or(&0.0)) * rv[n].get(g).unwrap_or(&0.0)).sum();
                    if hn[n] != 0.0 && rn[n] != 0.0 {
                        val /= hn[n] * rn[n];
                    }
                    total[n] += val * (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
                }
            }
            total.iter().sum::<f64>() / 4.0 / rs.len() as f64 * 10.0
        })
        .collect()
}

// ------------------------------------------------------------------ confidence intervals

/// A statistic with its seeded percentile-bootstrap 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
    pub n: usize,
}

/// Percentile bootstrap: `statistic` over `n` items resampled with replacement `resamples`
/// times from a ChaCha8 stream seeded with `seed`.
pub fn bootstrap(n: usize, resamples: usize, seed: u64, statistic: impl Fn(&[usize]) -> f64) -> Estimate {
    bootstrap_strata(&[n], resamples, seed, |idx| Some(statistic(&idx[0]))).expect("the statistic is always defined")
}

/// Percentile bootstrap over strata: each resample draws, stratum by stratum in order, as many
/// items with replacement from a stratum as it has (`sizes[k]`), from one ChaCha8 stream
/// seeded with `seed`; `statistic` gets the drawn indices of each stratum (0-based within the
/// stratum). With one stratum the draws are [`bootstrap`]'s. A statistic may be undefined
/// (None) for some draws (a resample without a scored item): the interval is the percentiles
/// of the defined resamples. None when the statistic is undefined on all the items; the
/// interval is the value itself when no resample is defined (no items, or none drawn).
pub fn bootstrap_strata(sizes: &[usize], resamples: usize, seed: u64, statistic: impl Fn(&[Vec<usize>]) -> Option<f64>) -> Option<Estimate> {
    let all: Vec<Vec<usize>> = sizes.iter().map(|&n| (0..n).collect()).collect();
    let value = statistic(&all)?;
    let n: usize = sizes.iter().sum();
    if n == 0 {
        return Some(Estimate { value, low: value, high: value, n });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut stats: Vec<f64> = (0..resamples)
        .filter_map(|_| {
            let idx: Vec<Vec<usize>> = sizes.iter().map(|&k| (0..k).map(|_| rng.random_range(0..k)).collect()).collect();
            statistic(&idx)
        })
        .collect();
    if stats.is_empty() {
        return Some(Estimate { value, low: value, high: value, n });
    }
    stats.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| stats[((p * (stats.len() - 1) as f64).round() as usize).min(stats.len() - 1)];
    Some(Estimate { value, low: q(0.025), high: q(0.975), n })
}

/// ROC AUC of scores of positives against negatives, as the Mann-Whitney statistic: the
/// share of (positive, negative) pairs where the positive scores higher, ties counted 1/2
/// (from mid-ranks, in O(n log n)). None without a positive or without a negative.
pub fn roc_auc(positives: &[f64], negatives: &[f64]) -> Option<f64> {
    let (p, n) = (positives.len(), negatives.len());
    if p == 0 || n == 0 {
        return None;
    }
    let mut all: Vec<(f64, bool)> = positives.iter().map(|&s| (s, true)).chain(negatives.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the positives' ranks (1-based), each run of ties at its mean rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += mid * all[i..=j].iter().filter(|x| x.1).count() as f64;
        i = j + 1;
    }
    let (p, n) = (p as f64, n as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// The mean of per-item scores with its bootstrap interval.
pub fn mean_with_ci(scores: &[f64], seed: u64) -> Estimate {
    bootstrap(scores.len(), 1000, seed, |idx| {
        if idx.is_empty() { 0.0 } else { idx.iter().map(|&i| scores[i]).sum::<f64>() / idx.len() as f64 }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn anls_by_hand() {
        // "helo" vs "hello": distance 1, longer length 5: 1 - 0.2.
        close(anls("helo", &s(&["hello"]), 0.5), 0.8);
        // Case and spacing do not count; the best reference wins.
        close(anls("  New   York ", &s(&["boston", "new york"]), 0.5), 1.0);
        // NL = 3/5 = 0.6 >= 0.5: no credit.
        close(anls("hexyz", &s(&["hello"]), 0.5), 0.0);
        // Empty prediction: NL 1 against a non-empty answer.
        close(anls("", &s(&["42"]), 0.5), 0.0);
        // Unicode counts characters, not bytes: "café" vs "cafe" is 1/4.
        close(anls("café", &s(&["cafe"]), 0.5), 0.75);
    }

    #[test]
    fn exact_matches() {
        close(exact_match(" Paris ", &s(&["Paris"])), 1.0);
        close(exact_match("paris", &s(&["Paris"])), 0.0);
        close(normalized_exact_match("The Paris!", &s(&["paris"])), 1.0);
        close(normalized_exact_match("", &s(&["a"])), 1.0); // both normalise to ""
        close(normalized_exact_match("", &s(&["b"])), 0.0);
    }

    #[test]
    fn vqa_accuracy_by_hand() {
        assert_eq!(vqa_normalize("Two dogs."), "2 dogs");
        assert_eq!(vqa_normalize("1,000"), "1000");
        assert_eq!(vqa_normalize("3.5"), "3.5");
        assert_eq!(vqa_normalize("dont know"), "don't know");
        assert_eq!(vqa_normalize("black-and-white"), "black and white");
        // 10 annotators, 2 say "2": each leave-one-out subset of 9 has 2 or 1 matches.
        // Leaving out a "2" (2 subsets): 1 match -> 1/3; otherwise (8 subsets): 2/3.
        let mut refs = vec!["two".to_string(); 2];
        refs.extend(vec!["3".to_string(); 8]);
        close(vqa_accuracy("2", &refs), (2.0 * (1.0 / 3.0) + 8.0 * (2.0 / 3.0)) / 10.0);
        // 4 of 10 agree: every subset has at least 3: full credit.
        let mut refs = vec!["yes".to_string(); 4];
        refs.extend(vec!["no".to_string(); 6]);
        close(vqa_accuracy("Yes", &refs), 1.0);
        close(vqa_accuracy("", &refs), 0.0);
    }

    #[test]
    fn relaxed_accuracy_by_hand() {
        close(relaxed_accuracy("104", &s(&["100"])), 1.0);
        close(relaxed_accuracy("106", &s(&["100"])), 0.0);
        close(relaxed_accuracy("12%", &s(&["0.125"])), 1.0); // 0.12 vs 0.125: 4%
        close(relaxed_accuracy("0", &s(&["0"])), 1.0); // zero target: text match
        close(relaxed_accuracy("Yes", &s(&["yes"])), 1.0);
        close(relaxed_accuracy("", &s(&["5"])), 0.0);
    }

    #[test]
    fn multiple_choice() {
        let opts = s(&["The grandfather", "The grandson", "Can't be determined"]);
        assert_eq!(parse_choice("B", &opts), Some(1));
        assert_eq!(parse_choice("(c) Can't be determined", &opts), Some(2));
        assert_eq!(parse_choice("the grandson.", &opts), Some(1));
        assert_eq!(parse_choice("ans0", &opts), Some(0));
        assert_eq!(parse_choice("Because he is old", &opts), None);
        close(multiple_choice_accuracy("A.", &opts, 0), 1.0);
        close(multiple_choice_accuracy("", &opts, 0), 0.0);
    }

    #[test]
    fn bleu_by_hand() {
        // Identical: every precision 1, no brevity penalty.
        let st = bleu_stats("a cat sat on the mat", &s(&["a cat sat on the mat"]));
        close(bleu4(&[st]), 1.0);
        // Papineni's clipping example: "the the the the the the the" vs "the cat is on the mat":
        // unigram precision 2/7, no bigram matches -> 0.
        let st = bleu_stats("the the the the the the the", &s(&["the cat is on the mat"]));
        assert_eq!((st.matches[0], st.totals[0]), (2, 7));
        close(bleu4(&[st]), 0.0);
        // Shorter candidate: p1 = 1, p2 = 1, p3 = 1, p4 = 1 (4 tokens, 1 four-gram), BP = e^(1-6/4).
        let st = bleu_stats("a cat sat on", &s(&["a cat sat on the mat"]));
        close(bleu4(&[st]), (1.0f64 - 6.0 / 4.0).exp());
    }

    #[test]
    fn rouge_l_by_hand() {
        // LCS("police killed the gunman", "police kill the gunman") = 3 (police, the, gunman).
        let r = rouge_l("police kill the gunman", &s(&["police killed the gunman"]));
        let (p, rc) = (3.0 / 4.0, 3.0 / 4.0);
        close(r, (1.0 + 1.44) * p * rc / (rc + 1.44 * p));
        close(rouge_l("", &s(&["x"])), 0.0);
    }

    #[test]
    fn caption_metric_edge_cases() {
        // Empty prediction: no n-grams, BLEU 0, ROUGE-L 0, CIDEr-D 0.
        let st = bleu_stats("", &s(&["a cat"]));
        assert_eq!((st.candidate_len, st.matches[0]), (0, 0));
        close(bleu4(&[st]), 0.0);
        close(rouge_l("", &s(&["a cat"])), 0.0);
        close(cider_d(&s(&[""]), &[s(&["a cat"])])[0], 0.0);
        // Several references: ROUGE-L takes the best precision and recall; casing and
        // punctuation do not count.
        let r = rouge_l("A Cat, sat!", &s(&["a dog ran", "the cat sat"]));
        let (p, rc) = (2.0 / 3.0, 2.0 / 3.0); // LCS "cat sat" = 2 of 3 either way
        close(r, (1.0 + 1.44) * p * rc / (rc + 1.44 * p));
        // BLEU clips against the largest count in any single reference.
        let st = bleu_stats("the the", &s(&["the cat", "the the dog"]));
        assert_eq!(st.matches[0], 2);
        // Unicode tokens survive tokenisation.
        assert_eq!(caption_tokens("Ein Bär, café!"), ["ein", "bär", "café"]);
    }

    #[test]
    fn anls_threshold_edge_and_numbers() {
        // Exactly at the threshold gets nothing: "ab" vs "cd" is NL 1; "abcd" vs "abxy" is 0.5.
        close(anls("abxy", &s(&["abcd"]), 0.5), 0.0);
        close(anls("abcx", &s(&["abcd"]), 0.5), 0.75);
        // Numbers are compared as text.
        close(anls("1,000", &s(&["1000"]), 0.5), 0.8);
        // Empty prediction and empty reference: identical.
        close(anls("", &s(&[""]), 0.5), 1.0);
    }

    #[test]
    fn cider_d_basics() {
        let cands = s(&["a dog runs on the grass", "a red car"]);
        let refs = vec![s(&["a dog runs on the grass", "a dog is running"]), s(&["a blue bus", "a bus on a road"])];
        let scores = cider_d(&cands, &refs);
        assert!(scores[0] > scores[1] && scores[1] >= 0.0);
        // An exact match of a reference with a unique vocabulary scores high; nothing shared scores 0.
        let scores = cider_d(&s(&["zebra stripes", "apple pie"]), &[s(&["zebra stripes"]), s(&["banana split"])]);
        close(scores[1], 0.0);
        assert!(scores[0] > 1.0);
    }

    #[test]
    fn extraction_metrics_by_hand() {
        let fields = s(&["invoice", "total", "date"]);
        let reference: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"invoice": "INV-7", "total": 12.5, "date": " 2024-01-02 ", "extra": "x"}"#).unwrap();
        // All three: strings trimmed, a number as its JSON text, text around the object.
        let out = r#"Here: {"invoice": " INV-7", "total": "12.5", "date": "2024-01-02"} done"#;
        close(json_valid(out, &fields), 1.0);
        close(field_exact_match(out, &fields, &reference).unwrap(), 1.0);
        // Two of three (case counts).
        let out = r#"{"invoice": "inv-7", "total": 12.5, "date": "2024-01-02"}"#;
        close(field_exact_match(out, &fields, &reference).unwrap(), 2.0 / 3.0);
        // One of three: another number, null.
        let out = r#"{"invoice": "INV-7", "total": 12, "date": null}"#;
        close(field_exact_match(out, &fields, &reference).unwrap(), 1.0 / 3.0);
        // A key too many or too few, no object, broken JSON: invalid, and no field counts.
        for out in [r#"{"invoice": "INV-7", "total": "12.5", "date": "2024-01-02", "x": 1}"#, r#"{"invoice": "INV-7", "total": "12.5"}"#, "INV-7, 12.5", r#"{"invoice": "INV-7", "#, ""] {
            close(json_valid(out, &fields), 0.0);
            close(field_exact_match(out, &fields, &reference).unwrap(), 0.0);
        }
        // A field without a reference value is an error, whatever the output.
        let e = field_exact_match("{}", &s(&["invoice", "iban"]), &reference).unwrap_err();
        assert!(e.contains("\"iban\""), "{e}");
        // References as an object or the JSON text of one.
        let text = serde_json::Value::String(r#"{"a": "1"}"#.into());
        assert_eq!(reference_object(Some(&text)).unwrap()["a"], "1");
        assert!(reference_object(Some(&serde_json::json!(["1"]))).is_err());
        assert!(reference_object(Some(&serde_json::json!("1"))).is_err());
        assert!(reference_object(None).is_err());
    }

    #[test]
    fn roc_auc_by_hand() {
        close(roc_auc(&[0.9, 0.8, 0.7], &[0.3, 0.2, 0.1]).unwrap(), 1.0);
        close(roc_auc(&[0.3, 0.2, 0.1], &[0.9, 0.8, 0.7]).unwrap(), 0.0);
        close(roc_auc(&[0.5, 0.5], &[0.5, 0.5, 0.5]).unwrap(), 0.5);
        // 3 x 3 pairs: 0.9 beats all three (3); 0.5 ties 0.5 and beats 0.2 and 0.1 (2.5);
        // 0.3 beats 0.2 and 0.1 (2): 7.5 / 9.
        close(roc_auc(&[0.9, 0.5, 0.3], &[0.5, 0.2, 0.1]).unwrap(), 7.5 / 9.0);
        // The same pairs counted directly, for scores with ties on both sides.
        let (pos, neg) = ([0.2, 0.7, 0.7, 0.1, 0.9], [0.7, 0.1, 0.3, 0.3]);
        let pairs: f64 = pos.iter().flat_map(|p| neg.iter().map(move |n| if p > n { 1.0 } else if p == n { 0.5 } else { 0.0 })).sum();
        close(roc_auc(&pos, &neg).unwrap(), pairs / 20.0);
        assert_eq!(roc_auc(&[], &[0.1]), None);
        assert_eq!(roc_auc(&[0.1], &[]), None);
    }

    #[test]
    fn bootstrap_strata_resamples_each_stratum_and_skips_undefined_draws() {
        // One stratum: the draws of `bootstrap`.
        let scores: Vec<f64> = (0..50).map(|i| f64::from(i % 4 == 0)).collect();
        let mean = |idx: &[usize]| idx.iter().map(|&i| scores[i]).sum::<f64>() / idx.len() as f64;
        let one = bootstrap_strata(&[50], 1000, 11, |idx| Some(mean(&idx[0]))).unwrap();
        assert_eq!(one, bootstrap(50, 1000, 11, mean));
        // Two strata keep their sizes: a difference of constant strata never varies.
        let gap = bootstrap_strata(&[3, 5], 200, 1, |idx| Some(idx[0].len() as f64 - idx[1].len() as f64)).unwrap();
        assert_eq!((gap.value, gap.low, gap.high, gap.n), (-2.0, -2.0, -2.0, 8));
        // Undefined on everything: None; undefined on some draws: those are left out.
        assert_eq!(bootstrap_strata(&[4], 100, 1, |_| None), None);
        // Scores [1, 0], defined only where item 0 was drawn: {0, 0} gives 1, {0, 1} 0.5, and
        // {1, 1} (which would give 0) is left out.
        let two = [1.0, 0.0];
        let some = bootstrap_strata(&[2], 100, 1, |idx| idx[0].contains(&0).then(|| idx[0].iter().map(|&i| two[i]).sum::<f64>() / 2.0)).unwrap();
        assert_eq!((some.value, some.low, some.high), (0.5, 0.5, 1.0));
        // No items: the value, as `bootstrap` gives it.
        assert_eq!(bootstrap_strata(&[0, 0], 100, 1, |_| Some(0.25)).unwrap(), Estimate { value: 0.25, low: 0.25, high: 0.25, n: 0 });
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_mean() {
        let scores: Vec<f64> = (0..200).map(|i| f64::from(i % 3 == 0)).collect();
        let a = mean_with_ci(&scores, 7);
        let b = mean_with_ci(&scores, 7);
        assert_eq!(a, b);
        assert!(a.low < a.value && a.value < a.high);
        assert!((a.value - 67.0 / 200.0).abs() < 1e-12);
    }
}
