//! PII detectors: a pattern finds candidates, a validator (Luhn, mod-97, SSN rules, address
//! ranges, calendar dates) rejects what cannot be the thing, and context words around the
//! match raise or lower the score. The filter set's threshold turns scores into decisions.

use std::sync::LazyLock;

use regex::Regex;

use super::{substr, Finding};

/// The PII types this module detects, by the names filter sets use.
pub const TYPES: &[&str] = &["email", "phone", "card", "iban", "ssn", "ip", "dob", "address"];

/// The text before byte `i` (char-aligned; never panics).
fn head(text: &str, i: usize) -> &str {
    substr(text, 0, i)
}

/// The text from byte `i` on (char-aligned; never panics).
fn tail(text: &str, i: usize) -> &str {
    substr(text, i, text.len())
}

/// Lower-cased text around a span (`window` bytes each side, widened to char boundaries).
fn context(text: &str, start: usize, end: usize, window: usize) -> (String, String) {
    (
        substr(text, start.saturating_sub(window), start).to_lowercase(),
        substr(text, end, end.saturating_add(window)).to_lowercase(),
    )
}

/// True if any of `words` occurs in `hay` as a whole word.
fn has_word(hay: &str, words: &[&str]) -> bool {
    words.iter().any(|w| {
        hay.match_indices(w).any(|(i, _)| {
            let before = head(hay, i).chars().next_back();
            let after = tail(hay, i + w.len()).chars().next();
            !before.is_some_and(|c| c.is_alphanumeric()) && !after.is_some_and(|c| c.is_alphanumeric())
        })
    })
}

fn finding(rule: &str, start: usize, end: usize, score: f64, detail: Option<String>) -> Finding {
    Finding { rule: rule.to_string(), category: "pii".into(), start, end, score: score.clamp(0.0, 1.0), detail }
}

fn digits(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_digit()).collect()
}

/// Whether a match is part of a longer number: a `.`, `,` or `-` joins it to digits on
/// either side ("1,4111 1111..." or "4111 1111 1111 1111.5").
fn glued_to_number(text: &str, start: usize, end: usize) -> bool {
    let joiner = |c: char| matches!(c, '.' | ',' | '-');
    let mut back = head(text, start).chars().rev();
    let glued_before = back.next().is_some_and(joiner) && back.next().is_some_and(|c| c.is_ascii_digit());
    let mut fwd = tail(text, end).chars();
    let glued_after = fwd.next().is_some_and(joiner) && fwd.next().is_some_and(|c| c.is_ascii_digit());
    glued_before || glued_after
}

/// The char just before `start` and just after `end`.
fn neighbours(text: &str, start: usize, end: usize) -> (Option<char>, Option<char>) {
    (head(text, start).chars().next_back(), tail(text, end).chars().next())
}

pub fn scan(text: &str, types: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    for t in types {
        match t.as_str() {
            "email" => emails(text, &mut out),
            "phone" => phones(text, &mut out),
            "card" => cards(text, &mut out),
            "iban" => ibans(text, &mut out),
            "ssn" => ssns(text, &mut out),
            "ip" => ips(text, &mut out),
            "dob" => dobs(text, &mut out),
            "address" => addresses(text, &mut out),
            _ => {}
        }
    }
    out
}

// ---------------------------------------------------------------- email

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    // Local parts may be internationalised (RFC 6531); domains are ASCII or punycode.
    Regex::new(r"[\p{L}\p{N}][\p{L}\p{N}._%+\-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?-u:\b)")
        .expect("valid regex")
});

/// Generic top-level domains common in real addresses; every two-letter country code counts too.
const GENERIC_TLDS: &[&str] = &[
    "com", "org", "net", "edu", "gov", "mil", "int", "info", "biz", "name", "pro", "mobi", "aero", "coop", "museum",
    "io", "ai", "app", "dev", "cloud", "tech", "online", "site", "store", "shop", "blog", "email", "mail", "world",
    "company", "group", "agency", "digital", "media", "news", "life", "live", "email", "global", "solutions",
    "services", "systems", "network", "center", "academy", "studio", "design", "xyz", "top", "club", "vip",
    "work", "space", "website", "tools", "health", "bank", "law", "finance", "capital", "consulting", "local",
    "example", "test", "invalid", "localhost",
];

fn emails(text: &str, out: &mut Vec<Finding>) {
    for m in EMAIL.find_iter(text) {
        let s = m.as_str();
        let Some((local, domain)) = s.split_once('@') else { continue };
        if local.ends_with('.') || local.contains("..") || domain.contains("..") {
            continue;
        }
        let tld = domain.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
        let known = tld.len() == 2 || GENERIC_TLDS.contains(&tld.as_str());
        let (before, after) = neighbours(text, m.start(), m.end());
        // In code: `a@b.shape(`, `git@host:repo`, `obj.attr@x.y` are not addresses.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let followed_by_word =
            |ch: char| after == Some(ch) && tail(text, m.end() + ch.len_utf8()).starts_with(|c: char| c.is_alphanumeric());
        let code_like = matches!(after, Some('(') | Some('[') | Some('_')) || followed_by_word(':') || followed_by_word('.')
            || matches!(before, Some('.') | Some('/') | Some('\\') | Some('$'));
        let mut score: f64 = if known { 0.9 } else { 0.3 };
        if code_like {
            score -= 0.6;
        }
        let (ctx_before, _) = context(text, m.start(), m.end(), 40);
        if has_word(&ctx_before, &["email", "e-mail", "mail", "contact", "write to", "reach", "mailto"]) {
            score += 0.2;
        }
        out.push(finding("email", m.start(), m.end(), score, None));
    }
}

// ---------------------------------------------------------------- phone

static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        // E.164 and international formats: +CC then groups.
        r"\+[1-9]\d{0,2}(?:[ .\-]?\(?\d{1,4}\)?){2,6}",
        // North American: (415) 555-0132, 415-555-0132, 415.555.0132
        r"|(?:\(\d{3}\)[ ]?|(?-u:\b)\d{3}[.\- ])\d{3}[.\- ]\d{4}(?-u:\b)",
        // European national formats with a trunk 0: 030 1234567, 020 7946 0958, 06-12345678
        r"|(?-u:\b)0\d{1,4}(?:[ /\-]\d{2,8}){1,3}(?-u:\b)",
    ))
    .expect("valid regex")
});

const PHONE_WORDS: &[&str] = &[
    "phone", "tel", "telephone", "call", "mobile", "cell", "fax", "contact", "whatsapp", "ph", "mob", "hotline",
    "text", "sms", "reach", "dial", "telefon", "téléphone", "handy", "number",
];
const NOT_PHONE_WORDS: &[&str] = &[
    "order", "invoice", "serial", "isbn", "issn", "sku", "part", "ref", "reference", "account", "acct", "tracking",
    "version", "id", "ticket", "case", "po", "batch", "lot", "model", "ssn", "social", "iban", "routing",
];

fn phones(text: &str, out: &mut Vec<Finding>) {
    for m in PHONE.find_iter(text) {
        let s = m.as_str().trim_end_matches(['-', '.', ' ', '/']);
        let end = m.start() + s.len();
        let d = digits(s);
        if !(7..=15).contains(&d.len()) {
            continue;
        }
        let (before, after) = neighbours(text, m.start(), end);
        // Part of a longer number, a date, a decimal or a version string.
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '/')
            || after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '/')
            || (after == Some('.') && tail(text, end + 1).starts_with(|c: char| c.is_ascii_digit()))
        {
            continue;
        }
        if looks_like_date(s) {
            continue;
        }
        let international = s.starts_with('+');
        // NANP numbers have no trunk 0; "030 1234567" is a national European number.
        let nanp = !international && d.len() == 10 && !s.starts_with('0');
        let below_2 = |i: usize| d.as_bytes().get(i).is_none_or(|&b| b < b'2');
        if nanp && (below_2(0) || below_2(3)) {
            continue; // NANP area codes and exchanges start with 2-9
        }
        let separators = s.chars().filter(|c| !c.is_ascii_digit() && *c != '+').count();
        let mut score: f64 = match (international, nanp) {
            (true, _) => 0.75,
            (false, true) => 0.6,
            (false, false) if separators > 0 => 0.45,
            _ => 0.2,
        };
        let (ctx_before, ctx_after) = context(text, m.start(), end, 32);
        if has_word(&ctx_before, PHONE_WORDS) {
            score += 0.3;
        }
        if has_word(&ctx_before, NOT_PHONE_WORDS) || ctx_before.trim_end().ends_with('#') {
            score -= 0.45;
        }
        if has_word(&ctx_after, &["ext", "x"]) {
            score += 0.1;
        }
        out.push(finding("phone", m.start(), end, score, None));
    }
}

fn looks_like_date(s: &str) -> bool {
    static DATE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^(?:(?:19|20)\d{2}[-./ ]\d{1,2}[-./ ]\d{1,2}|\d{1,2}[-./ ]\d{1,2}[-./ ](?:19|20)\d{2})$").expect("valid regex")
    });
    DATE.is_match(s)
}

// ---------------------------------------------------------------- payment cards

static CARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?-u:\b)\d(?:[ \-]?\d){12,18}(?-u:\b)").expect("valid regex"));

fn luhn(d: &str) -> bool {
    let mut sum = 0u32;
    for (i, c) in d.chars().rev().enumerate() {
        let Some(mut v) = c.to_digit(10) else { return false };
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

/// The card network of a number, from issuer identification ranges and lengths.
pub fn card_network(d: &str) -> Option<&'static str> {
    let len = d.len();
    let p = |n: usize| d.get(..n.min(len)).and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
    match () {
        _ if d.starts_with('4') && matches!(len, 13 | 16 | 19) => Some("visa"),
        _ if ((51..=55).contains(&p(2)) || (2221..=2720).contains(&p(4))) && len == 16 => Some("mastercard"),
        _ if matches!(p(2), 34 | 37) && len == 15 => Some("amex"),
        _ if (p(4) == 6011 || p(2) == 65 || (644..=649).contains(&p(3)) || (622126..=622925).contains(&p(6)))
            && (16..=19).contains(&len) =>
        {
            Some("discover")
        }
        _ if (3528..=3589).contains(&p(4)) && (16..=19).contains(&len) => Some("jcb"),
        _ if ((300..=305).contains(&p(3)) || matches!(p(2), 36 | 38 | 39) || p(4) == 3095) && (14..=19).contains(&len) => {
            Some("diners")
        }
        _ if p(2) == 62 && (16..=19).contains(&len) => Some("unionpay"),
        _ if (matches!(p(2), 50 | 56 | 57 | 58 | 67) || matches!(p(4), 6304 | 6390)) && (12..=19).contains(&len) => Some("maestro"),
        _ if (2200..=2204).contains(&p(4)) && (16..=19).contains(&len) => Some("mir"),
        _ => None,
    }
}

fn cards(text: &str, out: &mut Vec<Finding>) {
    for m in CARD.find_iter(text) {
        let s = m.as_str();
        if glued_to_number(text, m.start(), m.end()) {
            continue;
        }
        // Separators, if any, must be one kind: "4111 1111 1111 1111", not "4111-1111 11 111111".
        let seps: Vec<char> = s.chars().filter(|c| !c.is_ascii_digit()).collect();
        if seps.windows(2).any(|w| w[0] != w[1]) {
            continue;
        }
        let d = digits(s);
        if !luhn(&d) {
            continue;
        }
        let Some(network) = card_network(&d) else { continue };
        // The body of an IBAN printed after its "DE89 " head is not a card. (The word before
        // may be anything, "Réf" included: test its bytes, never slice it.)
        let head_token = head(text, m.start()).trim_end().rsplit(|c: char| c.is_whitespace()).next().unwrap_or("");
        if let [a, b, c, d] = head_token.as_bytes() {
            if a.is_ascii_uppercase() && b.is_ascii_uppercase() && c.is_ascii_digit() && d.is_ascii_digit() {
                continue;
            }
        }
        let mut score: f64 = 0.85;
        let (ctx_before, _) = context(text, m.start(), m.end(), 40);
        if has_word(&ctx_before, &["card", "credit", "debit", "visa", "mastercard", "amex", "cc", "pan", "payment", "paid"]) {
            score += 0.15;
        }
        if has_word(&ctx_before, &["order", "tracking", "isbn", "serial", "account", "id", "imei", "iban", "konto", "bank", "ref"]) {
            score -= 0.3;
        }
        out.push(finding("card", m.start(), m.end(), score, Some(network.into())));
    }
}

// ---------------------------------------------------------------- IBAN

static IBAN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?-u:\b)[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]){10,32}(?-u:\b)").expect("valid regex"));

/// IBAN length per country (ISO 13616 registry).
fn iban_length(country: &str) -> Option<usize> {
    Some(match country {
        "NO" => 15,
        "BE" => 16,
        "DK" | "FI" | "FO" | "GL" | "NL" => 18,
        "MK" | "SI" => 19,
        "AT" | "BA" | "EE" | "KZ" | "LT" | "LU" | "XK" => 20,
        "CH" | "CR" | "HR" | "LI" | "LV" => 21,
        "BG" | "BH" | "DE" | "GB" | "GE" | "IE" | "ME" | "RS" | "VA" => 22,
        "AE" | "GI" | "IL" | "TL" => 23,
        "AD" | "CZ" | "ES" | "MD" | "PK" | "RO" | "SA" | "SE" | "SK" | "TN" | "VG" => 24,
        "PT" | "ST" => 25,
        "IS" | "TR" => 26,
        "FR" | "GR" | "IT" | "MC" | "MR" | "SM" => 27,
        "AL" | "AZ" | "BY" | "CY" | "DO" | "GT" | "HU" | "LB" | "PL" | "SV" => 28,
        "BR" | "EG" | "PS" | "QA" | "UA" => 29,
        "JO" | "KW" | "MU" => 30,
        "MT" | "SC" => 31,
        "LC" => 32,
        _ => return None,
    })
}

fn iban_mod97(iban: &str) -> bool {
    let (Some(country_check), Some(bban)) = (iban.get(..4), iban.get(4..)) else { return false };
    let rearranged = bban.chars().chain(country_check.chars());
    let mut rem: u32 = 0;
    for c in rearranged {
        let v = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}

fn ibans(text: &str, out: &mut Vec<Finding>) {
    for m in IBAN.find_iter(text) {
        let s = m.as_str();
        let Some(country) = s.get(..2).map(str::to_ascii_uppercase) else { continue };
        let Some(len) = iban_length(&country) else { continue };
        // Take exactly the country's length of characters (a following word may have been
        // swallowed by the pattern's optional spaces).
        let mut count = 0;
        let mut end = m.start();
        for (i, c) in s.char_indices() {
            if c != ' ' {
                count += 1;
                if count == len {
                    end = m.start() + i + c.len_utf8();
                    break;
                }
            }
        }
        if count < len {
            continue;
        }
        // The IBAN must end at a boundary, not inside a longer token.
        if tail(text, end).chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        // `\d` also matches non-ASCII digits ("DE８９ ..."): those are not IBANs.
        let compact: String = substr(text, m.start(), end).chars().filter(|c| *c != ' ').collect::<String>().to_ascii_uppercase();
        if !compact.is_ascii() || !compact.get(2..4).is_some_and(|cd| cd.bytes().all(|b| b.is_ascii_digit())) || !iban_mod97(&compact) {
            continue;
        }
        let mut score: f64 = 0.9;
        let (ctx_before, _) = context(text, m.start(), end, 40);
        if has_word(&ctx_before, &["iban", "account", "bank", "transfer", "konto", "compte", "pay", "sepa"]) {
            score += 0.1;
        }
        out.push(finding("iban", m.start(), end, score, Some(country)));
    }
}

// ---------------------------------------------------------------- US SSN

static SSN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u:\b)(?:\d{3}-\d{2}-\d{4}|\d{3} \d{2} \d{4}|\d{9})(?-u:\b)").expect("valid regex")
});

/// SSA rules: no area 000, 666 or 900-999, no group 00, no serial 0000, and not one of the
/// numbers known from advertising and documentation.
pub fn ssn_valid(d: &str) -> bool {
    if d.len() != 9 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let num = |r: std::ops::Range<usize>| d.get(r).and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
    let (area, group, serial) = (num(0..3), num(3..5), num(5..9));
    !(area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0
        || matches!(d, "078051120" | "219099999" | "123456789" | "111111111" | "333333333"))
}

fn ssns(text: &str, out: &mut Vec<Finding>) {
    for m in SSN.find_iter(text) {
        let s = m.as_str();
        let (before, after) = neighbours(text, m.start(), m.end());
        if before.is_some_and(|c| matches!(c, '-' | '.' | '/' | '+' | '(' | ',')) || after.is_some_and(|c| matches!(c, '-' | '/' | ')'))
            || (after == Some('.') && tail(text, m.end() + 1).starts_with(|c: char| c.is_ascii_digit()))
        {
            continue;
        }
        let d = digits(s);
        if !ssn_valid(&d) {
            continue;
        }
        let mut score: f64 = if s.contains('-') { 0.6 } else if s.contains(' ') { 0.35 } else { 0.15 };
        let (ctx_before, _) = context(text, m.start(), m.end(), 40);
        if has_word(&ctx_before, &["ssn", "social security", "social security number", "ss#", "ss no", "taxpayer", "tin", "itin"])
            || ctx_before.contains("ss#")
        {
            score += 0.4;
        }
        if has_word(&ctx_before, &["phone", "tel", "call", "fax", "order", "invoice", "zip", "routing", "account", "isbn", "part", "serial"]) {
            score -= 0.4;
        }
        out.push(finding("ssn", m.start(), m.end(), score, None));
    }
}

// ---------------------------------------------------------------- IP addresses

static IPV4: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u:\b)(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?-u:\b)")
        .expect("valid regex")
});
static IPV6: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:[0-9a-f]{1,4}:|:)(?:[0-9a-f]{0,4}:){1,7}(?:[0-9a-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?:%[0-9a-z]+)?")
        .expect("valid regex")
});

const IP_WORDS: &[&str] = &[
    "ip", "ipv4", "ipv6", "address", "addr", "host", "server", "gateway", "dns", "ping", "connect", "connection",
    "from", "client", "subnet", "router", "proxy", "firewall", "src", "dst", "source", "destination", "login",
    "remote", "peer", "inet", "listening", "bound",
];
const NOT_IP_WORDS: &[&str] = &[
    "version", "ver", "v", "release", "build", "rev", "revision", "oid", "update", "patch", "firmware", "sdk",
    "api", "package", "library", "lib", "tag", "chapter", "section", "figure", "table", "step", "clause", "rule",
    "semver", "upgrade", "upgraded", "downgrade", "installed", "requires", "dependency",
];

fn ips(text: &str, out: &mut Vec<Finding>) {
    for m in IPV4.find_iter(text) {
        let (before, after) = neighbours(text, m.start(), m.end());
        // Part of a longer dotted sequence (OIDs, versions like 1.2.3.4.5) or a word (v1.2.3.4).
        if before.is_some_and(|c| c == '.' || c.is_ascii_alphanumeric() || c == '-' || c == '_')
            || (after == Some('.') && tail(text, m.end() + 1).starts_with(|c: char| c.is_ascii_digit()))
            || after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            continue;
        }
        let mut score: f64 = 0.6;
        let (ctx_before, ctx_after) = context(text, m.start(), m.end(), 32);
        if has_word(&ctx_before, IP_WORDS) || ctx_after.starts_with(':') || ctx_after.starts_with('/') {
            score += 0.3;
        }
        if has_word(&ctx_before, NOT_IP_WORDS) {
            score -= 0.5;
        }
        out.push(finding("ip", m.start(), m.end(), score, Some("ipv4".into())));
    }
    for m in IPV6.find_iter(text) {
        let s = m.as_str().split('%').next().unwrap_or("");
        let s = if s.ends_with("::") { s } else { s.strip_suffix(':').unwrap_or(s) };
        let end = m.start() + s.len();
        let (before, after) = neighbours(text, m.start(), end);
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == ':' || c == '_') || after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if s.parse::<std::net::Ipv6Addr>().is_err() {
            continue;
        }
        let groups = s.split(':').filter(|g| !g.is_empty()).count();
        let (ctx_before, _) = context(text, m.start(), end, 32);
        let mut score: f64 = if groups >= 3 { 0.75 } else { 0.3 };
        if has_word(&ctx_before, IP_WORDS) {
            score += 0.25;
        }
        out.push(finding("ip", m.start(), end, score, Some("ipv6".into())));
    }
}

// ---------------------------------------------------------------- dates of birth

static DATE: LazyLock<Regex> = LazyLock::new(|| {
    let month = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)";
    Regex::new(&format!(
        r"(?i)(?-u:\b)(?:\d{{1,2}}[/.\-]\d{{1,2}}[/.\-](?:19|20)\d{{2}}|(?:19|20)\d{{2}}-\d{{1,2}}-\d{{1,2}}|\d{{1,2}}(?:st|nd|rd|th)? {month}\.?,? (?:19|20)\d{{2}}|{month}\.? \d{{1,2}}(?:st|nd|rd|th)?,? (?:19|20)\d{{2}})(?-u:\b)"
    ))
    .expect("valid regex")
});

const BIRTH_WORDS: &[&str] = &[
    "born", "dob", "d.o.b", "d.o.b.", "date of birth", "birth date", "birthdate", "birthday", "birth", "geboren",
    "geburtsdatum", "né", "née", "date de naissance", "fecha de nacimiento", "nacido", "age",
];

/// Whether the date's numbers make a real calendar date (either day/month order).
fn plausible_date(s: &str) -> bool {
    let nums: Vec<u32> = s.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).filter_map(|p| p.parse().ok()).collect();
    let named_month = s.chars().any(|c| c.is_alphabetic() && !"stndrh".contains(c.to_ascii_lowercase()))
        || s.to_lowercase().contains("aug");
    let ok = |d: u32, m: u32, y: u32| {
        let days = match m {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
            2 => 28,
            _ => return false,
        };
        (1..=days).contains(&d)
    };
    match nums.as_slice() {
        _ if named_month => nums.iter().any(|&n| (1..=31).contains(&n)),
        [y, m, d] if *y >= 1900 => ok(*d, *m, *y),
        [a, b, y] => ok(*a, *b, *y) || ok(*b, *a, *y),
        _ => false,
    }
}

fn dobs(text: &str, out: &mut Vec<Finding>) {
    for m in DATE.find_iter(text) {
        if !plausible_date(m.as_str()) {
            continue;
        }
        let (before, after) = neighbours(text, m.start(), m.end());
        if before.is_some_and(|c| c == '/' || c == '.' || c == '-') || after.is_some_and(|c| c == '/' || c == '-') {
            continue;
        }
        let (ctx_before, _) = context(text, m.start(), m.end(), 40);
        let mut score: f64 = 0.2;
        if has_word(&ctx_before, BIRTH_WORDS) {
            score += 0.65;
        }
        if has_word(&ctx_before, &["invoice", "due", "issued", "order", "expires", "expiry", "shipped", "delivered", "dated", "effective", "signed"]) {
            score -= 0.2;
        }
        out.push(finding("dob", m.start(), m.end(), score, None));
    }
}

// ---------------------------------------------------------------- US addresses (ZIP+4)

static ZIP4: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?-u:\b)\d{5}-\d{4}(?-u:\b)").expect("valid regex"));
static STREET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?-u:\b)\d{1,6}(?:[ ]+[A-Za-z0-9.'\-]+){1,5}[ ]+(?:street|st|avenue|ave|road|rd|boulevard|blvd|drive|dr|lane|ln|court|ct|way|place|pl|terrace|parkway|pkwy|circle|cir|highway|hwy|square|sq|trail|trl)\.?(?-u:\b)")
        .expect("valid regex")
});

const STATES: &[&str] = &[
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "FL", "GA", "HI", "ID", "IL", "IN", "IA", "KS", "KY", "LA", "ME",
    "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA",
    "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY", "DC", "PR", "GU", "VI", "AS", "MP",
];

fn addresses(text: &str, out: &mut Vec<Finding>) {
    for m in ZIP4.find_iter(text) {
        let (before, after) = neighbours(text, m.start(), m.end());
        if before.is_some_and(|c| c == '-' || c == '.' || c == '#') || after.is_some_and(|c| c == '-') {
            continue;
        }
        // "..., CA 94105-1234": a state code (or name) right before the ZIP+4.
        let head_trim = head(text, m.start()).trim_end_matches([' ', ',']);
        // The last two bytes, if they are two ASCII letters (else not a state, and not sliced).
        let state_start = head_trim.len().saturating_sub(2);
        let state = head_trim.get(state_start..).unwrap_or("");
        let has_state = STATES.contains(&state) && !head(head_trim, state_start).chars().next_back().is_some_and(|c| c.is_alphanumeric());
        let mut score: f64 = if has_state { 0.7 } else { 0.25 };
        let mut start = if has_state { state_start } else { m.start() };
        // A street line ("1600 Main St, Springfield,") in the 80 bytes before extends the span.
        let window_start = text.floor_char_boundary(start.saturating_sub(80));
        if let Some(street) = STREET.find_iter(substr(text, window_start, start)).last() {
            let between = substr(text, window_start + street.end(), start);
            if !between.contains('\n') && between.len() <= 40 {
                start = window_start + street.start();
                score += 0.25;
            }
        }
        let (ctx_before, _) = context(text, start, m.end(), 40);
        if has_word(&ctx_before, &["address", "addr", "ship to", "bill to", "mail to", "lives at", "located at", "resides"]) {
            score += 0.2;
        }
        if has_word(&ctx_before, &["part", "order", "serial", "sku", "model", "ref", "invoice", "tracking"]) && !has_state {
            score -= 0.2;
        }
        out.push(finding("address", start, m.end(), score, None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str, t: &str) -> Vec<(String, f64)> {
        scan(text, &[t.to_string()]).into_iter().map(|f| (text[f.start..f.end].to_string(), f.score)).collect()
    }

    fn hits(text: &str, t: &str) -> Vec<String> {
        found(text, t).into_iter().filter(|(_, s)| *s >= 0.5).map(|(s, _)| s).collect()
    }

    #[test]
    fn validators() {
        assert!(luhn("4111111111111111") && !luhn("4111111111111112"));
        assert_eq!(card_network("378282246310005"), Some("amex"));
        assert!(iban_mod97("DE89370400440532013000") && !iban_mod97("DE89370400440532013001"));
        assert!(ssn_valid("536221234") && !ssn_valid("666221234") && !ssn_valid("536001234") && !ssn_valid("912221234"));
        assert!(plausible_date("29/02/2024") && !plausible_date("29/02/2023") && !plausible_date("31/13/2020"));
    }

    #[test]
    fn finds_each_type_with_validation() {
        assert_eq!(hits("Mail jane.doe@example.org today", "email"), ["jane.doe@example.org"]);
        assert!(hits("y = weights@inputs.values", "email").is_empty());
        assert_eq!(hits("Call +44 20 7946 0958 now", "phone"), ["+44 20 7946 0958"]);
        assert_eq!(hits("phone: (415) 555-0132", "phone"), ["(415) 555-0132"]);
        assert_eq!(hits("card 4111 1111 1111 1111 ok", "card"), ["4111 1111 1111 1111"]);
        assert!(hits("card 4111 1111 1111 1112 ok", "card").is_empty());
        assert_eq!(hits("IBAN: DE89 3704 0044 0532 0130 00 EUR", "iban"), ["DE89 3704 0044 0532 0130 00"]);
        assert!(hits("IBAN: DE89 3704 0044 0532 0130 01", "iban").is_empty());
        assert_eq!(hits("SSN 536-22-1234", "ssn"), ["536-22-1234"]);
        assert!(hits("SSN 666-22-1234", "ssn").is_empty());
        assert_eq!(hits("from 192.168.1.20 port", "ip"), ["192.168.1.20"]);
        assert!(hits("upgraded to version 1.2.3.4 today", "ip").is_empty());
        assert!(hits("oid 1.3.6.1.4.1.311", "ip").is_empty());
        assert_eq!(hits("server 2001:db8::8a2e:370:7334 up", "ip"), ["2001:db8::8a2e:370:7334"]);
        assert!(hits("at 12:30:45 and mac 00:1a:2b:3c:4d:5e", "ip").is_empty());
        assert_eq!(hits("Born on 14 March 1987 in Lyon", "dob"), ["14 March 1987"]);
        assert!(hits("Invoice date 14/03/2021", "dob").is_empty());
        assert_eq!(hits("1600 Main St, Springfield, IL 62704-1234", "address"), ["1600 Main St, Springfield, IL 62704-1234"]);
        assert!(hits("Part no. 62704-1234", "address").is_empty());
    }

    #[test]
    fn multibyte_offsets() {
        let text = "Grüße — écrivez à zoë.müller@example.de ou jean@exemple.fr";
        let f = scan(text, &["email".to_string()]);
        let spans: Vec<&str> = f.iter().map(|f| &text[f.start..f.end]).collect();
        assert_eq!(spans, ["zoë.müller@example.de", "jean@exemple.fr"]);
    }
}
