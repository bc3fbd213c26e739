//! Text folding for blocklist matching: compatibility (NFKC/NFKD) folding with accents dropped,
//! case folding, confusable (homoglyph) folding and leetspeak folding, keeping a map from every
//! folded byte back to the original byte range so that matches report original offsets.

use unicode_normalization::char::{decompose_compatible, is_combining_mark};

/// Folded text with, for each of its bytes, the original byte range it came from.
pub struct Folded {
    pub text: String,
    starts: Vec<u32>,
    ends: Vec<u32>,
}

impl Folded {
    /// The original byte range of the folded range `start..end` (byte offsets in `text`):
    /// from the start of the original char the first folded byte came from to the end of the
    /// one the last came from, so always on char boundaries of the original. None for an
    /// empty or out-of-range `start..end`.
    pub fn original_span(&self, start: usize, end: usize) -> Option<(usize, usize)> {
        if start >= end {
            return None;
        }
        let a = *self.starts.get(start)? as usize;
        let b = *self.ends.get(end - 1)? as usize;
        Some((a, b.max(a)))
    }

    /// The folded char before byte `i`, if any.
    pub fn char_before(&self, i: usize) -> Option<char> {
        super::substr(&self.text, 0, i).chars().next_back()
    }

    /// The folded char at byte `i`, if any.
    pub fn char_at(&self, i: usize) -> Option<char> {
        super::substr(&self.text, i, self.text.len()).chars().next()
    }
}

/// Folds a phrase the same way as text (no offsets needed).
pub fn fold_phrase(phrase: &str) -> String {
    fold(phrase).text.trim().to_string()
}

/// Homoglyphs of Latin letters in other scripts (Cyrillic, Greek, Armenian), as used to
/// dodge word filters. Fullwidth and mathematical letters are already handled by NFKC.
fn confusable(c: char) -> char {
    match c {
        'а' | 'α' | 'ɑ' => 'a',
        'в' | 'β' | 'ь' => 'b',
        'с' | 'ϲ' | 'ς' => 'c',
        'ԁ' | 'ժ' => 'd',
        'е' | 'ε' | 'ё' | 'є' => 'e',
        'ɡ' | 'ց' => 'g',
        'н' | 'һ' | 'η' => 'h',
        'і' | 'ι' | 'ї' | 'ı' | 'ӏ' => 'i',
        'ј' | 'ϳ' => 'j',
        'к' | 'κ' => 'k',
        'м' | 'μ' => 'm',
        'п' | 'ո' => 'n',
        'о' | 'ο' | 'σ' | 'օ' => 'o',
        'р' | 'ρ' => 'p',
        'ԛ' => 'q',
        'г' => 'r',
        'ѕ' => 's',
        'т' | 'τ' => 't',
        'υ' | 'ս' => 'u',
        'ν' | 'ѵ' => 'v',
        'ѡ' | 'ω' | 'ա' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'γ' | 'ү' => 'y',
        'ᴢ' => 'z',
        other => other,
    }
}

/// Leetspeak substitutes. Inside a word that has a letter ("k1ll", "ki11", "h3ll0"), digits
/// count as letters; symbols only before another word character ("$hit", "k!ll", not the
/// "!" of "kill!"). Numbers and punctuation on their own stay what they are. `1`, `!`, `|`
/// and `l` all fold to `i`, the same in phrases and text, so "k1ll" and "ki11" meet "kill".
fn leet(c: char, in_lettered_word: bool, next_in_word: bool) -> char {
    if !in_lettered_word {
        return c;
    }
    match c {
        '0' => 'o',
        '1' | 'l' => 'i',
        '3' => 'e',
        '4' => 'a',
        '5' => 's',
        '7' => 't',
        '8' => 'b',
        '@' | '$' | '!' | '|' | '€' if next_in_word => match c {
            '@' => 'a',
            '$' => 's',
            '€' => 'e',
            _ => 'i',
        },
        other => other,
    }
}

fn leet_symbol(c: char) -> bool {
    matches!(c, '@' | '$' | '!' | '|' | '€')
}

/// For each char: whether it is in a word (a run of letters, digits and leet symbols) that
/// has at least one letter, and whether the next char belongs to the same word.
fn word_context(chars: &[(usize, char)]) -> Vec<(bool, bool)> {
    let in_word = |c: char| c.is_alphanumeric() || leet_symbol(c);
    let mut out = vec![(false, false); chars.len()];
    let mut i = 0;
    while i < chars.len() {
        if !in_word(chars[i].1) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && in_word(chars[i].1) {
            i += 1;
        }
        let lettered = chars[start..i].iter().any(|(_, c)| c.is_alphabetic());
        for k in start..i {
            out[k] = (lettered, k + 1 < i);
        }
    }
    out
}

/// Folds `text`; runs of whitespace become one space.
pub fn fold(text: &str) -> Folded {
    let mut out = Folded { text: String::with_capacity(text.len()), starts: Vec::new(), ends: Vec::new() };
    out.starts.reserve(text.len());
    out.ends.reserve(text.len());
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let words = word_context(&chars);
    let mut last_space = false;
    for (k, &(start, c)) in chars.iter().enumerate() {
        let end = chars.get(k + 1).map(|(i, _)| *i).unwrap_or(text.len());
        let push = |out: &mut Folded, f: char| {
            let mut buf = [0u8; 4];
            let s = f.encode_utf8(&mut buf);
            out.text.push_str(s);
            for _ in 0..s.len() {
                out.starts.push(start as u32);
                out.ends.push(end as u32);
            }
        };
        if c.is_whitespace() {
            if !last_space {
                push(&mut out, ' ');
                last_space = true;
            }
            continue;
        }
        last_space = false;
        let (lettered, next_in_word) = words[k];
        if c.is_ascii() {
            push(&mut out, leet(c.to_ascii_lowercase(), lettered, next_in_word));
            continue;
        }
        decompose_compatible(c, |d| {
            if is_combining_mark(d) {
                return;
            }
            for l in d.to_lowercase() {
                if !is_combining_mark(l) {
                    push(&mut out, leet(confusable(l), lettered, next_in_word));
                }
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_accents_width_homoglyphs_and_leet() {
        assert_eq!(fold("Ｋíll").text, fold("kill").text);
        assert_eq!(fold("КILL").text, fold("kill").text); // Cyrillic К
        assert_eq!(fold("k1ll").text, fold("kill").text);
        assert_eq!(fold("ki11").text, fold("kill").text);
        assert_eq!(fold("$h00t").text, fold("shoot").text);
        assert_eq!(fold("build   a\n bomb").text, "buiid a bomb");
        // Numbers and punctuation on their own stay as they are.
        assert_eq!(fold("in 1990, 5 people!").text, "in 1990, 5 peopie!");
    }

    #[test]
    fn maps_back_to_original_bytes() {
        let text = "Zoë says ｋｉｌｌ now";
        let f = fold(text);
        let i = f.text.find("kiii").unwrap();
        let (s, e) = f.original_span(i, i + 4).unwrap();
        assert_eq!(&text[s..e], "ｋｉｌｌ");
    }
}
