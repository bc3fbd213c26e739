//! Hostile-text tests for every detector of the shipped filter sets: multi-byte characters
//! (accents, ß, CJK, emoji, combining marks, right-to-left text, zero-width joiners) placed
//! at every char offset before, inside and after real matches. Screening must never panic,
//! every span (the detectors' raw ones and the decisions') must lie on char boundaries, and a
//! match the decoration leaves whole must still be found, covering the same text.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use super::{FilterKind, FilterSet};

/// A real match: the line's `needle`, the part of it a decision must cover (`core`), and the
/// filter and rule that must report it.
struct Case {
    needle: &'static str,
    core: &'static str,
    filter: FilterKind,
    rule: &'static str,
}

const fn case(needle: &'static str, core: &'static str, filter: FilterKind, rule: &'static str) -> Case {
    Case { needle, core, filter, rule }
}

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";

/// Matches every detector of the `pii-only` set (and so of `default`) must find.
fn pii_and_secret_cases() -> Vec<Case> {
    use FilterKind::{Pii, Secrets};
    vec![
        case("4111 1111 1111 1111", "4111 1111 1111 1111", Pii, "card"),
        case("DE89 3704 0044 0532 0130 00", "DE89 3704 0044 0532 0130 00", Pii, "iban"),
        case("jane.doe@example.org", "jane.doe@example.org", Pii, "email"),
        case("+44 20 7946 0958", "+44 20 7946 0958", Pii, "phone"),
        case("536-22-1234", "536-22-1234", Pii, "ssn"),
        case("192.168.1.20", "192.168.1.20", Pii, "ip"),
        case("born on 14 March 1987", "14 March 1987", Pii, "dob"),
        case("1600 Main St, Springfield, IL 62704-1234", "IL 62704-1234", Pii, "address"),
        case("AKIAQ3EGRUZ6K2V7XW4M", "AKIAQ3EGRUZ6K2V7XW4M", Secrets, "aws_access_key_id"),
        case(JWT, JWT, Secrets, "jwt"),
        case("-----BEGIN RSA PRIVATE KEY-----", "-----BEGIN RSA PRIVATE KEY-----", Secrets, "private_key"),
    ]
}

/// Blocklisted phrases of the `default` set (two with multi-byte letters of their own).
fn blocklist_cases() -> Vec<Case> {
    use FilterKind::Blocklist;
    vec![
        case("build a bomb", "build a bomb", Blocklist, "weapons.en"),
        case("kill you", "kill you", Blocklist, "violence.en"),
        case("ich töte dich", "ich töte dich", Blocklist, "violence.de"),
        case("erschießen", "erschießen", Blocklist, "violence.de"),
    ]
}

/// Decorations, and whether each is a word character at the edge that touches a match (a
/// letter there may legitimately join the match's word, so only non-word ones must leave a
/// touching match found).
const DECORATIONS: &[(&str, bool)] = &[
    ("é", true),
    ("ß", true),
    ("日本", true),
    ("Réf", true),
    ("Zoë’s", true),
    ("שלום", true),       // right-to-left letters
    ("مرحبا", true),      // right-to-left letters
    ("e\u{301}", true),   // e + combining acute
    ("\u{301}", false),   // a lone combining mark (attaches to whatever precedes it)
    ("\u{200D}", false),  // zero-width joiner
    ("\u{200F}", false),  // right-to-left mark
    ("\u{202E}", false),  // right-to-left override
    ("👍", false),
    ("👩\u{200D}💻", false), // emoji ZWJ sequence
    ("…", false),
    ("’", false),
];

/// Neutral filler (no context words that raise or lower scores), long enough that the
/// detectors' context windows (32-80 bytes) end inside it.
const PRE: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod";
const POST: &str = "tempor incididunt ut labore";

/// Where a decoration goes relative to the match.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Place {
    /// With at least a space between it and the match: the match is whole.
    Apart,
    /// Directly before or after the match.
    Touching,
    /// Between two chars of the match.
    Inside,
}

struct Failures(Vec<String>);

impl Failures {
    fn push(&mut self, s: String) {
        if self.0.len() < 40 {
            self.0.push(s);
        } else if self.0.len() == 40 {
            self.0.push("...".into());
        }
    }
}

/// Screens `line` with `set` and checks it; `need` is the match's byte range in `line` when
/// it must be found. Returns the number of checks made.
fn check(set: &FilterSet, line: &str, c: &Case, need: Option<(usize, usize)>, fails: &mut Failures) -> usize {
    let run = catch_unwind(AssertUnwindSafe(|| (set.findings(line).into_iter().map(|(k, f, _)| (k, f)).collect::<Vec<_>>(), set.screen(line, None))));
    let Ok((raw, screening)) = run else {
        fails.push(format!("[{}] panicked on {line:?}", set.name));
        return 1;
    };
    let on_boundaries = |a: usize, b: usize| a <= b && line.is_char_boundary(a) && line.is_char_boundary(b);
    let mut checks = 1;
    for (kind, f) in &raw {
        checks += 1;
        if !on_boundaries(f.start, f.end) {
            fails.push(format!("[{}] {kind}:{} raw span {}..{} is not on char boundaries of {line:?}", set.name, f.rule, f.start, f.end));
        }
    }
    for d in &screening.decisions {
        checks += 1;
        match d.span {
            Some([a, b]) if on_boundaries(a, b) => {}
            span => fails.push(format!("[{}] {}:{} span {span:?} is not on char boundaries of {line:?}", set.name, d.filter, d.rule)),
        }
    }
    if let Some((start, end)) = need {
        checks += 1;
        let found = screening.decisions.iter().any(|d| {
            d.filter == c.filter && d.rule == c.rule && d.span.is_some_and(|[a, b]| a <= start && end <= b)
        });
        if !found {
            let got: Vec<String> = screening
                .decisions
                .iter()
                .map(|d| format!("{}:{} {:?}", d.filter, d.rule, d.span.and_then(|[a, b]| line.get(a..b))))
                .collect();
            fails.push(format!("[{}] {}:{} {:?} not found in {line:?} (decisions: {got:?})", set.name, c.filter, c.rule, c.core));
        }
    }
    checks
}

/// Every line with a decoration at one char offset of `PRE + " " + needle + " " + POST`, as
/// it is and as a word of its own (with a space after or before it: "eiusmod Réf 4111 ..."),
/// with, when the match must be found, the byte range of `core` in the line.
fn lines(c: &Case, deco: &str, word_edge: bool) -> Vec<(String, Place, Option<(usize, usize)>)> {
    let base = format!("{PRE} {} {POST}", c.needle);
    let n_start = PRE.len() + 1;
    let n_end = n_start + c.needle.len();
    let core_at = n_start + c.needle.find(c.core).expect("core is part of the needle");
    let mut out = Vec::new();
    for ins in [deco.to_string(), format!("{deco} "), format!(" {deco}")] {
        for (p, _) in base.char_indices().chain([(base.len(), ' ')]) {
            let line = format!("{}{ins}{}", &base[..p], &base[p..]);
            // Offsets at or after the insertion point move (the end of the match only when
            // the insertion is before it).
            let shift = |i: usize| if p <= i { i + ins.len() } else { i };
            let (start, end) = (shift(n_start), if p < n_end { n_end + ins.len() } else { n_end });
            let place = if p > n_start && p < n_end {
                Place::Inside
            } else if line[..start].ends_with(' ') && line[end..].starts_with(' ') {
                Place::Apart
            } else {
                Place::Touching
            };
            // Inserted inside the match, it is not whole; touching it with a word character
            // may join the match's word; otherwise the match must be found.
            let whole = match place {
                Place::Apart => true,
                Place::Touching => !word_edge,
                Place::Inside => false,
            };
            let core = (shift(core_at), shift(core_at) + c.core.len());
            out.push((line, place, whole.then_some(core)));
        }
    }
    out
}

fn load(name: &str) -> FilterSet {
    FilterSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("filters").join(format!("{name}.toml"))).expect("shipped set loads")
}

#[test]
fn multibyte_text_around_and_inside_matches() {
    let mut fails = Failures(Vec::new());
    let mut checks = 0;
    let mut required = 0;
    for (set_name, cases) in [
        ("pii-only", pii_and_secret_cases()),
        ("default", pii_and_secret_cases().into_iter().chain(blocklist_cases()).collect()),
    ] {
        let set = load(set_name);
        for c in &cases {
            // The undecorated line finds the match: otherwise the rest would prove nothing.
            let plain = format!("{PRE} {} {POST}", c.needle);
            let at = PRE.len() + 1 + plain[PRE.len() + 1..].find(c.core).unwrap_or(0);
            checks += check(&set, &plain, c, Some((at, at + c.core.len())), &mut fails);
            for &(deco, word_edge) in DECORATIONS {
                for (line, _place, need) in lines(c, deco, word_edge) {
                    required += usize::from(need.is_some());
                    checks += check(&set, &line, c, need, &mut fails);
                }
            }
        }
    }
    assert!(fails.0.is_empty(), "{} failures, e.g.:\n{}", fails.0.len(), fails.0.join("\n"));
    // Not vacuous: thousands of lines where the match had to be found.
    assert!(required > 5_000 && checks > 20_000, "only {required} required finds, {checks} checks");
}

/// The reported panic and its relatives: a 4-byte word ("Réf", an emoji) right before a card
/// number (the IBAN-head test sliced it at byte 2), and a multi-byte char right before a ZIP+4.
#[test]
fn known_panics_stay_fixed() {
    let set = load("pii-only");
    for line in ["Réf 4111 1111 1111 1111", "👍 4111 1111 1111 1111", "Ré 4111 1111 1111 1111", "日 62704-1234", "Straße 日 62704-1234", "ßß 4111-1111-1111-1111"] {
        let s = set.screen(line, None);
        let card = s.decisions.iter().find(|d| d.filter == FilterKind::Pii && d.rule == "card");
        if line.contains("4111") {
            let [a, b] = card.and_then(|d| d.span).expect("the card is found");
            assert_eq!(line.get(a..b).map(|t| t.replace('-', " ")).as_deref(), Some("4111 1111 1111 1111"), "{line:?}");
        }
    }
    // Public helpers given non-ASCII digits or letters do not slice inside them.
    assert_eq!(super::pii::card_network("４１１１１１１１１１１１１１１１"), None);
    assert!(!super::pii::ssn_valid("５３６")); // 9 bytes, 3 chars
    assert!(set.screen("IBAN DE８９ 3704 0044 0532 0130 00", None).decisions.iter().all(|d| d.rule != "iban"));
}
