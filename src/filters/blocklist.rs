//! Phrase blocklists per category and language, matched on folded text (see `fold`) on word
//! boundaries with one Aho-Corasick automaton: linear in the input whatever the list sizes.

use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use super::fold::{fold, fold_phrase};
use super::Finding;
use crate::error::{Error, Result};

/// One phrase list: `CATEGORY.LANG.txt`, one phrase per line, `#` comments.
#[derive(Debug, Clone)]
pub struct PhraseList {
    pub name: String,
    pub category: String,
    pub language: String,
    pub phrases: Vec<String>,
}

impl PhraseList {
    pub fn load(path: &Path, category: Option<&str>, language: Option<&str>) -> Result<PhraseList> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        PhraseList::parse(path, &text, category, language)
    }

    /// A phrase list from the text of the file at `path` (which names its category and
    /// language unless they are given).
    pub fn parse(path: &Path, text: &str, category: Option<&str>, language: Option<&str>) -> Result<PhraseList> {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let (file_category, file_language) = match stem.rsplit_once('.') {
            Some((c, l)) => (c.to_string(), l.to_string()),
            None => (stem.clone(), "und".to_string()),
        };
        let phrases: Vec<String> = text
            .lines()
            .map(|l| l.split_once('#').map(|(p, _)| p).unwrap_or(l).trim())
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if phrases.is_empty() {
            return Err(Error::Filter { path: path.to_path_buf(), message: "the phrase list is empty".into() });
        }
        Ok(PhraseList {
            name: stem,
            category: category.map(str::to_string).unwrap_or(file_category),
            language: language.map(str::to_string).unwrap_or(file_language),
            phrases,
        })
    }
}

pub struct Blocklist {
    lists: Vec<PhraseList>,
    /// Pattern id -> (list index, phrase index).
    owners: Vec<(usize, usize)>,
    automaton: Option<AhoCorasick>,
}

impl Blocklist {
    pub fn new(lists: Vec<PhraseList>) -> Result<Blocklist> {
        let mut patterns = Vec::new();
        let mut owners = Vec::new();
        for (li, list) in lists.iter().enumerate() {
            for (pi, phrase) in list.phrases.iter().enumerate() {
                let folded = fold_phrase(phrase);
                if !folded.is_empty() {
                    patterns.push(folded);
                    owners.push((li, pi));
                }
            }
        }
        let automaton = if patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .match_kind(MatchKind::Standard)
                    .build(&patterns)
                    .map_err(|e| Error::Filter { path: "blocklist".into(), message: e.to_string() })?,
            )
        };
        Ok(Blocklist { lists, owners, automaton })
    }

    pub fn phrase_count(&self) -> usize {
        self.owners.len()
    }

    /// Every phrase occurrence on word boundaries, with original byte offsets.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let Some(ac) = &self.automaton else { return Vec::new() };
        let folded = fold(text);
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
        let mut out = Vec::new();
        for m in ac.find_overlapping_iter(&folded.text) {
            if word(folded.char_before(m.start())) || word(folded.char_at(m.end())) {
                continue;
            }
            let Some(list) = self.owners.get(m.pattern().as_usize()).and_then(|&(li, _)| self.lists.get(li)) else { continue };
            let Some((start, end)) = folded.original_span(m.start(), m.end()) else { continue };
            out.push(Finding {
                rule: list.name.clone(),
                category: list.category.clone(),
                start,
                end,
                score: 1.0,
                detail: Some(format!("language {}", list.language)),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(phrases: &[&str]) -> Blocklist {
        Blocklist::new(vec![PhraseList {
            name: "violence.en".into(),
            category: "violence".into(),
            language: "en".into(),
            phrases: phrases.iter().map(|s| s.to_string()).collect(),
        }])
        .unwrap()
    }

    #[test]
    fn matches_obfuscated_phrases_on_word_boundaries() {
        let b = list(&["build a bomb", "kill"]);
        let text = "How do I BUILD A B0MB? Also: skill, killer, and — КILL!";
        let found: Vec<&str> = b.scan(text).iter().map(|f| &text[f.start..f.end]).collect();
        assert_eq!(found, vec!["BUILD A B0MB", "КILL"]);
    }

    #[test]
    fn long_input_is_fine() {
        let b = list(&["kill"]);
        let text = "a ".repeat(100_000) + "kill";
        assert_eq!(b.scan(&text).len(), 1);
    }
}
