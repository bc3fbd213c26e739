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
}

/// Where in the pipeline a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Input,
    Output,
}

/// One thing a filter found and what was done about it. `span` is a byte range of the text
/// that was screened (None for whole-item decisions such as the policy filter's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub filter: String,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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
            let stage = d.stage.map(|s| format!("{s:?} ").to_lowercase()).unwrap_or_default();
            format!("{stage}{}:{} ({}, score {:.2})", d.filter, d.rule, d.category, d.score)
        })
        .collect();
    (!top.is_empty()).then(|| top.join("; "))
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Flag => "flag",
            Outcome::Modify => "modify",
            Outcome::Drop => "drop",
            Outcome::Quarantine => "quarantine",
        }
    }
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

impl FilterSet {
    pub fn load(path: &Path) -> Result<FilterSet> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let err = |message: String| Error::Filter { path: path.to_path_buf(), message };
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
                let lists = c
                    .list
                    .iter()
                    .map(|l| PhraseList::load(&base.join(&l.file), l.category.as_deref(), l.language.as_deref()))
                    .collect::<Result<Vec<_>>>()?;
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
            salt,
        })
    }

    pub fn policy(&self) -> Option<&PolicyFilter> {
        self.policy.as_ref()
    }

    /// Runs the rule-based filters (everything but the policy filter) over `text`.
    pub fn screen(&self, text: &str, stage: Option<Stage>) -> Screening {
        let mut decisions = Vec::new();
        let mut add = |filter: &str, findings: Vec<Finding>, t: &Thresholded, key: &dyn Fn(&Finding) -> String| {
            for f in findings {
                if f.score >= t.threshold {
                    decisions.push(Decision {
                        filter: filter.into(),
                        action: t.action_for(&key(&f)),
                        rule: f.rule,
                        category: f.category,
                        span: Some([f.start, f.end]),
                        score: (f.score * 1e4).round() / 1e4,
                        stage,
                        detail: f.detail,
                    });
                }
            }
        };
        if let Some((types, t)) = &self.pii {
            add("pii", pii::scan(text, types), t, &|f| f.rule.clone());
        }
        if let Some(t) = &self.secrets {
            add("secrets", secrets::scan(text), t, &|f| f.rule.clone());
        }
        if let Some((b, t)) = &self.blocklist {
            add("blocklist", b.scan(text), t, &|f| f.category.clone());
        }
        if let Some((s, t)) = &self.injection {
            add("injection", s.scan(text), t, &|f| f.rule.clone());
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
                    filter: "policy".into(),
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

    /// Applies the rewriting actions; overlapping spans merge and take the strongest action.
    fn rewrite(&self, text: &str, decisions: &[Decision]) -> String {
        let mut spans: Vec<(usize, usize, Action, String)> = decisions
            .iter()
            .filter(|d| d.action.rewrites())
            .filter_map(|d| d.span.map(|s| (s[0], s[1], d.action, placeholder_label(d))))
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
            out.push_str(&text[at..start]);
            let span = &text[start..end];
            match action {
                Action::Redact => out.push_str(&format!("[{label}]")),
                Action::Hash => {
                    let mut h = Sha256::new();
                    h.update(self.salt);
                    h.update(span.as_bytes());
                    out.push_str(&format!("[{label}:{}]", &format!("{:x}", h.finalize())[..12]));
                }
                Action::Mask => out.push_str(&mask(span)),
                _ => out.push_str(span),
            }
            at = end;
        }
        out.push_str(&text[at..]);
        out
    }
}

fn placeholder_label(d: &Decision) -> String {
    let s = if d.filter == "pii" { &d.rule } else { &d.category };
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
        assert!(s.screen(&sc.text, None).decisions.iter().all(|d| d.filter == "blocklist"));
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

    #[test]
    fn mask_keeps_last_four() {
        assert_eq!(mask("4111-1111-1111-1234"), "****-****-****-1234");
        assert_eq!(mask("abc"), "abc");
    }
}
