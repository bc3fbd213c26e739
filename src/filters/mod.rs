//! Safety filters. A filter set (`filters/NAME.toml`) combines PII detection, secret detection,
//! phrase blocklists, prompt-injection rules and a model policy filter; screening a text yields
//! one [`Decision`] per thing that fired (filter, rule, category, byte span, score, action) and
//! the text with the redact/mask/hash actions applied. Drop and quarantine are carried out by
//! the caller (the pipeline), which sees them in [`Screening::outcome`].

pub mod blocklist;
pub mod fold;
pub mod injection;
pub mod pii;
pub mod policy;
pub mod secrets;

#[cfg(test)]
mod hostile;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use blocklist::{Blocklist, PhraseList};
use injection::{InjectionRule, InjectionScreen};
pub use policy::{PolicyCategory, PolicyFilter, PolicyItem};

/// What to do with a span or row that fired. Ordered by how far it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Record the decision only.
    Flag,
    /// Keep the last 4 letters or digits of the span, star the rest.
    Mask,
    /// Replace the span with a salted hash, stable within a run (`[EMAIL:1f3a…]`).
    Hash,
    /// Replace the span with a typed placeholder (`[EMAIL]`).
    Redact,
    /// Drop the row: it is not processed further and its result carries no output.
    Drop,
    /// Move the row to the quarantine table with the reason.
    Quarantine,
}

impl Action {
    fn rewrites(self) -> bool {
        matches!(self, Action::Mask | Action::Hash | Action::Redact)
    }

    /// The name filter sets and stored decisions use (what serde writes).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Flag => "flag",
            Action::Mask => "mask",
            Action::Hash => "hash",
            Action::Redact => "redact",
            Action::Drop => "drop",
            Action::Quarantine => "quarantine",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in the pipeline a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Input,
    Output,
}

impl Stage {
    /// The name stored decisions use (what serde writes).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Input => "input",
            Stage::Output => "output",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which filter of a set made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterKind {
    Pii,
    Secrets,
    Blocklist,
    Injection,
    Policy,
}

impl FilterKind {
    /// The name stored decisions and reports use (what serde writes).
    pub fn as_str(self) -> &'static str {
        match self {
            FilterKind::Pii => "pii",
            FilterKind::Secrets => "secrets",
            FilterKind::Blocklist => "blocklist",
            FilterKind::Injection => "injection",
            FilterKind::Policy => "policy",
        }
    }
}

impl std::fmt::Display for FilterKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with a filter's stored name, for code that holds names (e.g. read from JSON).
impl PartialEq<str> for FilterKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for FilterKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One thing a filter found and what was done about it. `span` is a byte range of the text
/// that was screened (None for whole-item decisions such as the policy filter's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub filter: FilterKind,
    pub rule: String,
    pub category: String,
    pub span: Option<[usize; 2]>,
    pub score: f64,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stage: Option<Stage>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
}

/// The policy filter's P("Yes") per category for one thing it screened (`item`: "text" or
/// "image"), below its threshold or not: decisions record only the categories that reached
/// theirs. What the filter's ranking of items is measured on (e.g. its ROC AUC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyScores {
    pub stage: Stage,
    pub item: String,
    /// Category name -> P("Yes"), rounded to 6 decimals as decisions are.
    pub scores: BTreeMap<String, f64>,
}

/// A detector's raw output, before the set's threshold and action apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub rule: String,
    pub category: String,
    pub start: usize,
    pub end: usize,
    pub score: f64,
    pub detail: Option<String>,
}

/// The strongest action among a screening's decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Flag,
    Modify,
    Drop,
    Quarantine,
}

#[derive(Debug, Clone)]
pub struct Screening {
    /// The text after redact / mask / hash actions.
    pub text: String,
    pub decisions: Vec<Decision>,
}

impl Screening {
    pub fn outcome(&self) -> Outcome {
        outcome(&self.decisions)
    }

    pub fn reason(&self) -> Option<String> {
        reason(&self.decisions)
    }
}

/// The strongest action among decisions.
pub fn outcome(decisions: &[Decision]) -> Outcome {
    decisions
        .iter()
        .map(|d| match d.action {
            Action::Flag => Outcome::Flag,
            Action::Mask | Action::Hash | Action::Redact => Outcome::Modify,
            Action::Drop => Outcome::Drop,
            Action::Quarantine => Outcome::Quarantine,
        })
        .max()
        .unwrap_or(Outcome::Pass)
}

/// Why a row was dropped or quarantined, for the result's reason column.
pub fn reason(decisions: &[Decision]) -> Option<String> {
    let top: Vec<String> = decisions
        .iter()
        .filter(|d| matches!(d.action, Action::Drop | Action::Quarantine))
        .map(|d| {
            let stage = d.stage.map(|s| format!("{} ", s.as_str())).unwrap_or_default();
            format!("{stage}{}:{} ({}, score {:.2})", d.filter, d.rule, d.category, d.score)
        })
        .collect();
    (!top.is_empty()).then(|| top.join("; "))
}

impl Outcome {
    /// The name results and reports store (what serde writes).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Flag => "flag",
            Outcome::Modify => "modify",
            Outcome::Drop => "drop",
            Outcome::Quarantine => "quarantine",
        }
    }

    /// Same as [`Outcome::as_str`]; kept for existing callers.
    pub fn name(self) -> &'static str {
        self.as_str()
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// ------------------------------------------------------------------ char-boundary safety

/// `start..end` widened to the nearest char boundaries of `text` and clamped to its length
/// (with `start <= end`), so that slicing `text` with it cannot panic and a character the
/// range only partly covered is kept whole. Every offset computed from data goes through
/// this (or [`substr`]) before it slices.
pub fn char_span(text: &str, start: usize, end: usize) -> (usize, usize) {
    let start = text.floor_char_boundary(start);
    let end = text.ceil_char_boundary(end.max(start));
    (start, end)
}

/// `text[start..end]` after [`char_span`]: never panics.
pub fn substr(text: &str, start: usize, end: usize) -> &str {
    let (a, b) = char_span(text, start, end);
    text.get(a..b).unwrap_or("")
}

// ------------------------------------------------------------------ the TOML file

fn default_threshold() -> f64 {
    0.5
}
fn redact() -> Action {
    Action::Redact
}
fn flag() -> Action {
    Action::Flag
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFile {
    #[serde(default)]
    description: Option<String>,
    pii: Option<PiiConfig>,
    secrets: Option<Thresholded>,
    blocklist: Option<BlocklistConfig>,
    injection: Option<InjectionConfig>,
    policy: Option<policy::PolicyConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PiiConfig {
    /// Detectors to run (default: all of `pii::TYPES`).
    types: Option<Vec<String>>,
    #[serde(default = "default_threshold")]
    threshold: f64,
    #[serde(default = "redact")]
    action: Action,
    /// Per-type action overrides, e.g. `card = "mask"`.
    #[serde(default)]
    actions: BTreeMap<String, Action>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlocklistConfig {
    #[serde(default = "flag")]
    action: Action,
    /// Per-category action overrides.
    #[serde(default)]
    actions: BTreeMap<String, Action>,
    #[serde(default)]
    list: Vec<ListRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListRef {
    /// Phrase file, relative to the filter set file; `CATEGORY.LANG.txt` names both.
    file: PathBuf,
    category: Option<String>,
    language: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectionConfig {
    #[serde(default = "default_threshold")]
    threshold: f64,
    #[serde(default = "flag")]
    action: Action,
    #[serde(default)]
    rule: Vec<InjectionRule>,
}

// ------------------------------------------------------------------ the loaded set

/// A threshold, a default action and per-rule overrides (`[secrets]` is exactly this).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Thresholded {
    #[serde(default = "default_threshold")]
    threshold: f64,
    #[serde(default = "redact")]
    action: Action,
    #[serde(default)]
    actions: BTreeMap<String, Action>,
}

impl Thresholded {
    fn action_for(&self, key: &str) -> Action {
        self.actions.get(key).copied().unwrap_or(self.action)
    }
}

/// A loaded filter set.
pub struct FilterSet {
    pub name: String,
    pub path: PathBuf,
    pub description: Option<String>,
    pii: Option<(Vec<String>, Thresholded)>,
    secrets: Option<Thresholded>,
    blocklist: Option<(Blocklist, Thresholded)>,
    injection: Option<(InjectionScreen, Thresholded)>,
    policy: Option<PolicyFilter>,
    /// SHA-256 (hex) over every file the set was loaded from; see [`FilterSet::content_hash`].
    content_hash: String,
    /// Salt for the hash action: random per loaded set, so hashes are stable within a run and
    /// cannot be matched across runs.
    salt: [u8; 16],
}

impl std::fmt::Debug for FilterSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterSet").field("name", &self.name).field("path", &self.path).finish()
    }
}

/// Where a filter set named `name` is looked up: a path if it looks like one, else
/// `DIR/NAME.toml` for each of `dirs` in order.
pub fn resolve_set(name: &str, dirs: &[PathBuf]) -> Result<PathBuf> {
    let as_path = Path::new(name);
    if name.ends_with(".toml") || name.contains('/') {
        return Ok(as_path.to_path_buf());
    }
    for d in dirs {
        let p = d.join(format!("{name}.toml"));
        if p.is_file() {
            return Ok(p);
        }
    }
    let looked: Vec<String> = dirs.iter().map(|d| d.join(format!("{name}.toml")).display().to_string()).collect();
    Err(Error::Filter { path: PathBuf::from(name), message: format!("no filter set named {name:?} (looked for {})", looked.join(", ")) })
}

/// Finds the filter set a spec in `base` names: a path (relative to `base` when it exists
/// there, else to the working directory) if it looks like one, else `NAME.toml` in
/// `base/filters`, `base/../filters`, then `./filters`.
pub fn find_set(name: &str, base: &Path) -> Result<PathBuf> {
    let dirs = [base.join("filters"), base.join("..").join("filters"), PathBuf::from("filters")];
    let path = resolve_set(name, &dirs)?;
    Ok(if path.is_relative() && !path.exists() { base.join(&path) } else { path })
}

fn check_threshold(path: &Path, what: &str, t: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&t) {
        return Err(Error::Filter { path: path.to_path_buf(), message: format!("{what}.threshold {t} is not in [0, 1]") });
    }
    Ok(())
}

/// Hashes the files a set is loaded from: each as its name and its bytes, both prefixed by
/// their length, so that no two different sequences of files hash the same.
struct ContentHasher(Sha256);

impl ContentHasher {
    fn add(&mut self, name: &str, bytes: &[u8]) {
        for part in [name.as_bytes(), bytes] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part);
        }
    }

    fn finish(self) -> String {
        format!("{:x}", self.0.finalize())
    }
}

impl FilterSet {
    pub fn load(path: &Path) -> Result<FilterSet> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let err = |message: String| Error::Filter { path: path.to_path_buf(), message };
        // The set file under its own file name, then every file it names under the name it
        // uses for it (relative to the set), in the set's order: a copy of a set elsewhere
        // hashes the same, and any change to any of its files changes the hash.
        let mut hasher = ContentHasher(Sha256::new());
        hasher.add(&path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), text.as_bytes());
        let file: SetFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let pii = match file.pii {
            Some(c) => {
                check_threshold(path, "pii", c.threshold)?;
                let types = c.types.unwrap_or_else(|| pii::TYPES.iter().map(|s| s.to_string()).collect());
                for t in types.iter().chain(c.actions.keys()) {
                    if !pii::TYPES.contains(&t.as_str()) {
                        return Err(err(format!("pii: unknown type {t:?} (known: {})", pii::TYPES.join(", "))));
                    }
                }
                Some((types, Thresholded { threshold: c.threshold, action: c.action, actions: c.actions }))
            }
            None => None,
        };
        if let Some(c) = &file.secrets {
            check_threshold(path, "secrets", c.threshold)?;
        }
        let secrets = file.secrets;
        let blocklist = match file.blocklist {
            Some(c) => {
                let mut lists = Vec::with_capacity(c.list.len());
                for l in &c.list {
                    let file = base.join(&l.file);
                    let list_text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
                    hasher.add(&l.file.to_string_lossy(), list_text.as_bytes());
                    lists.push(PhraseList::parse(&file, &list_text, l.category.as_deref(), l.language.as_deref())?);
                }
                if lists.is_empty() {
                    return Err(err("blocklist: no [[blocklist.list]] entries".into()));
                }
                Some((Blocklist::new(lists)?, Thresholded { threshold: 0.0, action: c.action, actions: c.actions }))
            }
            None => None,
        };
        let injection = match file.injection {
            Some(c) => {
                check_threshold(path, "injection", c.threshold)?;
                if c.rule.is_empty() {
                    return Err(err("injection: no [[injection.rule]] entries".into()));
                }
                let screen = InjectionScreen::new(c.rule).map_err(err)?;
                Some((screen, Thresholded { threshold: c.threshold, action: c.action, actions: BTreeMap::new() }))
            }
            None => None,
        };
        let policy = file.policy.map(|c| PolicyFilter::new(c, base)).transpose().map_err(err)?;
        let mut salt = [0u8; 16];
        rand::Rng::fill(&mut rand::rng(), &mut salt);
        Ok(FilterSet {
            name: path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            path: path.to_path_buf(),
            description: file.description,
            pii,
            secrets,
            blocklist,
            injection,
            policy,
            content_hash: hasher.finish(),
            salt,
        })
    }

    pub fn policy(&self) -> Option<&PolicyFilter> {
        self.policy.as_ref()
    }

    /// SHA-256 (lower-case hex) of the set's content: its TOML file and every phrase list it
    /// reads, each with its name, in a fixed order. Computed once at load; provenance records
    /// it so that a changed set is a changed configuration.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    /// Every rule-based detector's raw findings over `text`, with the filter and the threshold
    /// and actions that apply to it.
    fn findings(&self, text: &str) -> Vec<(FilterKind, Finding, &Thresholded)> {
        let mut out = Vec::new();
        if let Some((types, t)) = &self.pii {
            out.extend(pii::scan(text, types).into_iter().map(|f| (FilterKind::Pii, f, t)));
        }
        if let Some(t) = &self.secrets {
            out.extend(secrets::scan(text).into_iter().map(|f| (FilterKind::Secrets, f, t)));
        }
        if let Some((b, t)) = &self.blocklist {
            out.extend(b.scan(text).into_iter().map(|f| (FilterKind::Blocklist, f, t)));
        }
        if let Some((s, t)) = &self.injection {
            out.extend(s.scan(text).into_iter().map(|f| (FilterKind::Injection, f, t)));
        }
        out
    }

    /// Runs the rule-based filters (everything but the policy filter) over `text`.
    pub fn screen(&self, text: &str, stage: Option<Stage>) -> Screening {
        let mut decisions = Vec::new();
        for (filter, f, t) in self.findings(text) {
            if f.score < t.threshold {
                continue;
            }
            // Blocklist actions are per category, the others per rule.
            let key = if filter == FilterKind::Blocklist { &f.category } else { &f.rule };
            // Detectors report char-aligned spans; this keeps it so whatever a detector does.
            let (start, end) = char_span(text, f.start, f.end);
            decisions.push(Decision {
                filter,
                action: t.action_for(key),
                rule: f.rule,
                category: f.category,
                span: Some([start, end]),
                score: (f.score * 1e4).round() / 1e4,
                stage,
                detail: f.detail,
            });
        }
        decisions.sort_by_key(|d| (d.span.map(|s| s[0]).unwrap_or(0), d.span.map(|s| s[1]).unwrap_or(0)));
        let text = self.rewrite(text, &decisions);
        Screening { text, decisions }
    }

    /// Adds the policy filter's decisions for one item (`what`: "text" or "image"; scores per
    /// category, in the order of the set's categories).
    pub fn add_policy_decisions(&self, decisions: &mut Vec<Decision>, what: &str, scores: &[f64], stage: Option<Stage>) {
        let Some(p) = &self.policy else { return };
        for (c, &score) in p.categories.iter().zip(scores) {
            if score >= c.threshold {
                decisions.push(Decision {
                    filter: FilterKind::Policy,
                    rule: c.name.clone(),
                    category: c.name.clone(),
                    span: None,
                    score: (score * 1e6).round() / 1e6,
                    action: c.action.unwrap_or(p.action),
                    stage,
                    detail: Some(format!("{what}: P(Yes) {score:.4} >= threshold {}", c.threshold)),
                });
            }
        }
    }

    /// The policy filter's scores of one item, every category's (`what`: "text" or "image";
    /// scores in the order of the set's categories); None without a policy filter.
    pub fn policy_scores(&self, what: &str, scores: &[f64], stage: Stage) -> Option<PolicyScores> {
        let p = self.policy.as_ref()?;
        let scores = p.categories.iter().zip(scores).map(|(c, &score)| (c.name.clone(), (score * 1e6).round() / 1e6)).collect();
        Some(PolicyScores { stage, item: what.to_string(), scores })
    }

    /// Applies the rewriting actions; overlapping spans merge and take the strongest action.
    fn rewrite(&self, text: &str, decisions: &[Decision]) -> String {
        let mut spans: Vec<(usize, usize, Action, String)> = decisions
            .iter()
            .filter(|d| d.action.rewrites())
            .filter_map(|d| d.span.map(|s| char_span(text, s[0], s[1])).map(|(a, b)| (a, b, d.action, placeholder_label(d))))
            .filter(|s| s.0 < s.1)
            .collect();
        if spans.is_empty() {
            return text.to_string();
        }
        spans.sort_by_key(|s| (s.0, std::cmp::Reverse(s.1)));
        let mut merged: Vec<(usize, usize, Action, String)> = Vec::new();
        for s in spans {
            match merged.last_mut() {
                Some(last) if s.0 < last.1 => {
                    last.1 = last.1.max(s.1);
                    if s.2 > last.2 {
                        last.2 = s.2;
                        last.3 = s.3;
                    }
                }
                _ => merged.push(s),
            }
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end, action, label) in merged {
            // Spans are char-aligned (char_span) and sorted, merged so they do not overlap.
            out.push_str(substr(text, at, start));
            let span = substr(text, start, end);
            match action {
                Action::Redact => out.push_str(&format!("[{label}]")),
                Action::Hash => {
                    let mut h = Sha256::new();
                    h.update(self.salt);
                    h.update(span.as_bytes());
                    // A SHA-256 is 64 hex digits: the first 12 always exist.
                    out.push_str(&format!("[{label}:{}]", &format!("{:x}", h.finalize())[..12]));
                }
                Action::Mask => out.push_str(&mask(span)),
                _ => out.push_str(span),
            }
            at = at.max(end);
        }
        out.push_str(substr(text, at, text.len()));
        out
    }
}

fn placeholder_label(d: &Decision) -> String {
    let s = if d.filter == FilterKind::Pii { &d.rule } else { &d.category };
    s.to_uppercase()
}

/// Stars every letter and digit except the last four; separators stay.
pub fn mask(span: &str) -> String {
    let alnum = span.chars().filter(|c| c.is_alphanumeric()).count();
    let mut seen = 0;
    span.chars()
        .map(|c| {
            if c.is_alphanumeric() {
                seen += 1;
                if seen + 4 <= alnum { '*' } else { c }
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(toml: &str) -> (tempfile::TempDir, FilterSet) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("violence.en.txt"), "# test list\nbuild a bomb\n").unwrap();
        let p = dir.path().join("t.toml");
        std::fs::write(&p, toml).unwrap();
        let s = FilterSet::load(&p).unwrap();
        (dir, s)
    }

    #[test]
    fn actions_rewrite_spans_and_keep_offsets() {
        let (_d, s) = set(
            "[pii]\naction = \"redact\"\n[pii.actions]\ncard = \"mask\"\nphone = \"hash\"\n\
             [blocklist]\naction = \"quarantine\"\n[[blocklist.list]]\nfile = \"violence.en.txt\"\n",
        );
        let text = "Zoë: zoe@example.org, card 4111 1111 1111 1111, tel +44 20 7946 0958. How to build a bomb";
        let sc = s.screen(text, Some(Stage::Input));
        assert!(sc.text.starts_with("Zoë: [EMAIL], card **** **** **** 1111, tel [PHONE:"), "{}", sc.text);
        assert!(sc.text.ends_with("How to build a bomb"));
        for d in &sc.decisions {
            let [a, b] = d.span.unwrap();
            assert!(text.is_char_boundary(a) && text.is_char_boundary(b));
        }
        assert_eq!(sc.outcome(), Outcome::Quarantine);
        assert!(sc.reason().unwrap().contains("blocklist:violence.en"));
        // Hashes are stable within a set.
        let again = s.screen(text, None);
        assert_eq!(again.text, sc.text);
        // Redacted output has nothing left to find.
        assert!(s.screen(&sc.text, None).decisions.iter().all(|d| d.filter == FilterKind::Blocklist));
    }

    #[test]
    fn bad_sets_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "[pii]\ntypes = [\"passport\"]\n").unwrap();
        let e = FilterSet::load(&p).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("passport"), "{e}");
        std::fs::write(&p, "[pii]\nthreshold = 2.0\n").unwrap();
        assert!(FilterSet::load(&p).unwrap_err().to_string().contains("threshold"));
        std::fs::write(&p, "[pii]\naction = \"explode\"\n").unwrap();
        assert!(FilterSet::load(&p).unwrap_err().to_string().contains("explode"));
        assert!(resolve_set("nope", &[dir.path().to_path_buf()]).unwrap_err().to_string().contains("nope.toml"));
    }

    /// Copies a shipped set and the phrase lists it names into a temporary directory.
    fn copy_set(name: &str) -> (tempfile::TempDir, PathBuf) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("filters");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("blocklists")).unwrap();
        for e in std::fs::read_dir(src.join("blocklists")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join("blocklists").join(e.file_name())).unwrap();
        }
        let p = dir.path().join(format!("{name}.toml"));
        std::fs::copy(src.join(format!("{name}.toml")), &p).unwrap();
        (dir, p)
    }

    #[test]
    fn content_hash_covers_the_set_and_every_list() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("filters");
        for name in ["default", "pii-only"] {
            let original = FilterSet::load(&shipped.join(format!("{name}.toml"))).unwrap();
            let (_d, copy) = copy_set(name);
            let h = original.content_hash();
            assert_eq!(h.len(), 64, "{h}");
            assert!(h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            // The same files elsewhere: the same hash (and loading twice is stable).
            assert_eq!(FilterSet::load(&copy).unwrap().content_hash(), h, "{name}");
            assert_eq!(FilterSet::load(&copy).unwrap().content_hash(), h, "{name}");
            // Any change to the set file changes it.
            let toml = std::fs::read_to_string(&copy).unwrap();
            std::fs::write(&copy, format!("{toml}\n# a comment\n")).unwrap();
            assert_ne!(FilterSet::load(&copy).unwrap().content_hash(), h, "{name}");
        }
        // Any change to one phrase list the set reads changes it; other files do not count.
        let (dir, copy) = copy_set("default");
        let h = FilterSet::load(&copy).unwrap().content_hash().to_string();
        std::fs::write(dir.path().join("unrelated.txt"), "x").unwrap();
        assert_eq!(FilterSet::load(&copy).unwrap().content_hash(), h);
        let list = dir.path().join("blocklists/weapons.en.txt");
        let text = std::fs::read_to_string(&list).unwrap();
        std::fs::write(&list, text.replacen("pipe bomb", "pipe bombs", 1)).unwrap();
        let changed = FilterSet::load(&copy).unwrap().content_hash().to_string();
        assert_ne!(changed, h);
        // Back as it was: the hash is back too.
        std::fs::write(&list, &text).unwrap();
        assert_eq!(FilterSet::load(&copy).unwrap().content_hash(), h);
        // A line moved from one list to the next (same bytes in all) still changes it.
        let (a, b) = (dir.path().join("blocklists/violence.en.txt"), dir.path().join("blocklists/violence.de.txt"));
        let (ta, tb) = (std::fs::read_to_string(&a).unwrap(), std::fs::read_to_string(&b).unwrap());
        let last = ta.lines().last().unwrap().to_string();
        std::fs::write(&a, ta.replacen(&format!("{last}\n"), "", 1)).unwrap();
        std::fs::write(&b, format!("{last}\n{tb}")).unwrap();
        assert_ne!(FilterSet::load(&copy).unwrap().content_hash(), h);
    }

    #[test]
    fn enums_serialise_to_the_stored_names() {
        for k in [FilterKind::Pii, FilterKind::Secrets, FilterKind::Blocklist, FilterKind::Injection, FilterKind::Policy] {
            assert_eq!(serde_json::to_value(k).unwrap(), serde_json::json!(k.as_str()));
            assert_eq!(serde_json::from_value::<FilterKind>(serde_json::json!(k.as_str())).unwrap(), k);
            assert_eq!(k.to_string(), k.as_str());
            assert!(k == k.as_str());
        }
        assert_eq!(
            [FilterKind::Pii, FilterKind::Secrets, FilterKind::Blocklist, FilterKind::Injection, FilterKind::Policy].map(FilterKind::as_str),
            ["pii", "secrets", "blocklist", "injection", "policy"]
        );
        for a in [Action::Flag, Action::Mask, Action::Hash, Action::Redact, Action::Drop, Action::Quarantine] {
            assert_eq!(serde_json::to_value(a).unwrap(), serde_json::json!(a.as_str()));
            assert_eq!(a.as_str(), format!("{a:?}").to_lowercase());
        }
        for o in [Outcome::Pass, Outcome::Flag, Outcome::Modify, Outcome::Drop, Outcome::Quarantine] {
            assert_eq!(serde_json::to_value(o).unwrap(), serde_json::json!(o.as_str()));
            assert_eq!((o.name(), o.to_string()), (o.as_str(), o.as_str().to_string()));
            assert_eq!(o.as_str(), format!("{o:?}").to_lowercase());
        }
        for s in [Stage::Input, Stage::Output] {
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
        // A decision stored before the enums reads back and writes the same JSON.
        let stored = r#"{"filter":"pii","rule":"card","category":"pii","span":[4,23],"score":0.85,"action":"mask","stage":"input","detail":"visa"}"#;
        let d: Decision = serde_json::from_str(stored).unwrap();
        assert_eq!(d.filter, FilterKind::Pii);
        assert_eq!(serde_json::to_string(&d).unwrap(), stored);
        let q = Decision { filter: FilterKind::Blocklist, rule: "weapons.en".into(), category: "weapons".into(), span: Some([0, 1]), score: 1.0, action: Action::Quarantine, stage: Some(Stage::Output), detail: None };
        assert_eq!(reason(&[q]).unwrap(), "output blocklist:weapons.en (weapons, score 1.00)");
    }

    #[test]
    fn rewrite_survives_spans_off_char_boundaries() {
        let (_d, s) = set("[pii]\naction = \"redact\"\n");
        let text = "Zoë 日本 👍";
        let d = |a: usize, b: usize, action: Action| Decision {
            filter: FilterKind::Pii, rule: "email".into(), category: "pii".into(), span: Some([a, b]), score: 1.0, action, stage: None, detail: None,
        };
        for a in 0..=text.len() + 2 {
            for b in 0..=text.len() + 2 {
                for action in [Action::Redact, Action::Mask, Action::Hash, Action::Flag] {
                    let out = s.rewrite(text, &[d(a, b, action), d(b / 2, a, action)]);
                    assert!(!out.is_empty());
                }
            }
        }
        // A span inside "ë" widens to the whole char.
        assert_eq!(s.rewrite(text, &[d(3, 4, Action::Redact)]), "Zo[EMAIL] 日本 👍");
        assert_eq!(char_span(text, 3, 4), (2, 4));
        assert_eq!(char_span(text, 100, 2), (text.len(), text.len()));
        assert_eq!(substr(text, 6, 7), "日");
    }

    #[test]
    fn mask_keeps_last_four() {
        assert_eq!(mask("4111-1111-1111-1234"), "****-****-****-1234");
        assert_eq!(mask("abc"), "abc");
    }
}
