//! The model policy filter, ShieldGemma-style: for each policy category a prompt puts the item
//! (text, or an image) next to the category's principle and asks whether it violates it; the
//! score is P("Yes") from the model's next-token distribution, normalised over "Yes" and "No"
//! as ShieldGemma does (no generation). Prompts and principles are data in the filter set, so
//! the reference script renders exactly the same ones.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Action;
use crate::error::Result;
use crate::model::{Gemma4, ImageSource, Request};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default = "super::flag")]
    pub action: Action,
    /// Model directory (relative to the set file). Default: the pipeline's model, or
    /// `--model` for `gemma-batch filter`.
    pub model: Option<PathBuf>,
    /// minijinja template of the user turn for text items; variables `item`, `principle`,
    /// `category`.
    pub text_template: String,
    /// Template for image items (the image goes before the text); variables `principle`,
    /// `category`.
    pub image_template: String,
    /// System prompt, if any.
    pub system: Option<String>,
    /// The answer tokens whose probabilities are compared.
    #[serde(default = "yes")]
    pub yes: String,
    #[serde(default = "no")]
    pub no: String,
    /// Prompts per model call.
    #[serde(default = "batch")]
    pub batch_size: usize,
    pub category: Vec<CategoryConfig>,
}

fn yes() -> String {
    "Yes".into()
}
fn no() -> String {
    "No".into()
}
fn batch() -> usize {
    8
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryConfig {
    pub name: String,
    pub principle: String,
    #[serde(default = "super::default_threshold")]
    pub threshold: f64,
    pub action: Option<Action>,
}

#[derive(Debug, Clone)]
pub struct PolicyCategory {
    pub name: String,
    pub principle: String,
    pub threshold: f64,
    pub action: Option<Action>,
}

pub struct PolicyFilter {
    pub action: Action,
    pub model: Option<PathBuf>,
    pub categories: Vec<PolicyCategory>,
    pub system: Option<String>,
    pub yes: String,
    pub no: String,
    pub batch_size: usize,
    templates: minijinja::Environment<'static>,
}

/// What the policy filter looks at.
#[derive(Debug, Clone)]
pub enum PolicyItem {
    Text(String),
    Image(ImageSource),
}

impl PolicyFilter {
    pub fn new(c: PolicyConfig, base: &Path) -> std::result::Result<PolicyFilter, String> {
        if c.category.is_empty() {
            return Err("policy: no [[policy.category]] entries".into());
        }
        let mut categories = Vec::new();
        for cat in c.category {
            if !(0.0..=1.0).contains(&cat.threshold) {
                return Err(format!("policy category {:?}: threshold {} is not in [0, 1]", cat.name, cat.threshold));
            }
            categories.push(PolicyCategory { name: cat.name, principle: cat.principle, threshold: cat.threshold, action: cat.action });
        }
        let mut templates = minijinja::Environment::new();
        templates.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        templates.set_keep_trailing_newline(true);
        templates.add_template_owned("text", c.text_template).map_err(|e| format!("policy.text_template: {e}"))?;
        templates.add_template_owned("image", c.image_template).map_err(|e| format!("policy.image_template: {e}"))?;
        Ok(PolicyFilter {
            action: c.action,
            model: c.model.map(|m| base.join(m)),
            categories,
            system: c.system,
            yes: c.yes,
            no: c.no,
            batch_size: c.batch_size.max(1),
            templates,
        })
    }

    /// The user-turn text for an item and a category.
    pub fn render(&self, item: &PolicyItem, category: &PolicyCategory) -> std::result::Result<String, String> {
        let (name, text) = match item {
            PolicyItem::Text(t) => ("text", t.as_str()),
            PolicyItem::Image(_) => ("image", ""),
        };
        let tmpl = self.templates.get_template(name).map_err(|e| e.to_string())?;
        tmpl.render(minijinja::context! { item => text, principle => category.principle, category => category.name })
            .map_err(|e| format!("policy template: {e:#}"))
    }

    /// The model requests for an item, one per category.
    pub fn requests(&self, item: &PolicyItem) -> std::result::Result<Vec<Request>, String> {
        self.categories
            .iter()
            .map(|c| {
                Ok(Request {
                    system: self.system.clone(),
                    prompt: self.render(item, c)?,
                    images: match item {
                        PolicyItem::Image(src) => vec![src.clone()],
                        PolicyItem::Text(_) => Vec::new(),
                    },
                })
            })
            .collect()
    }

    /// P("Yes") per item and category, batched through the model. An item that cannot be
    /// prepared (a corrupt image) gets its error instead.
    pub fn score(&self, model: &mut Gemma4, items: &[PolicyItem]) -> Result<Vec<std::result::Result<Vec<f64>, String>>> {
        let n = self.categories.len();
        let mut out: Vec<std::result::Result<Vec<f64>, String>> = Vec::with_capacity(items.len());
        let mut prepared = Vec::new();
        let mut owners = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let reqs = match self.requests(item) {
                Ok(r) => r,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            match reqs.iter().map(|r| model.prepare(r)).collect::<Result<Vec<_>>>() {
                Ok(p) => {
                    prepared.extend(p);
                    owners.push(i);
                    out.push(Ok(Vec::with_capacity(n)));
                }
                Err(e) => out.push(Err(e.to_string())),
            }
        }
        let candidates = [self.yes.clone(), self.no.clone()];
        // One P(Yes) per prepared prompt, in order; None where the model gave no score for an
        // answer (an item with one is an error, never a panic).
        let mut probs: Vec<Option<f64>> = Vec::with_capacity(prepared.len());
        for chunk in prepared.chunks(self.batch_size) {
            let scores = model.score_batch(chunk, &candidates)?;
            let before = probs.len();
            probs.extend(scores.iter().take(chunk.len()).map(|s| match (s.first(), s.get(1)) {
                (Some(y), Some(n)) => Some(p_yes(y.logprob, n.logprob)),
                _ => None,
            }));
            // Keep prompts and scores aligned even if the model answered for fewer prompts.
            probs.resize(before + chunk.len(), None);
        }
        for (k, &i) in owners.iter().enumerate() {
            let item: Option<Vec<f64>> = probs.get(k * n..(k + 1) * n).and_then(|p| p.iter().copied().collect());
            if let Some(slot) = out.get_mut(i) {
                *slot = item.ok_or_else(|| format!("the policy model returned no {:?}/{:?} scores for this item", self.yes, self.no));
            }
        }
        Ok(out)
    }
}

/// exp(yes) / (exp(yes) + exp(no)), computed stably.
pub fn p_yes(logprob_yes: f64, logprob_no: f64) -> f64 {
    1.0 / (1.0 + (logprob_no - logprob_yes).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_yes_is_a_two_way_softmax() {
        assert!((p_yes(0.0, 0.0) - 0.5).abs() < 1e-12);
        assert!((p_yes((0.9f64).ln(), (0.1f64).ln()) - 0.9).abs() < 1e-12);
        assert!(p_yes(-1000.0, 0.0) >= 0.0);
    }
}
