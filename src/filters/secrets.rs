//! Secret detectors: provider token formats (AWS, GitHub, GitLab, Slack), private key blocks,
//! JWTs (the header must decode to JSON naming an algorithm), and high-entropy values assigned
//! to key-like names.

use std::sync::LazyLock;

use base64::Engine;
use regex::Regex;

use super::{substr, Finding};

struct Rule {
    name: &'static str,
    pattern: &'static str,
    score: f64,
}

/// Token formats that are secrets by construction.
const RULES: &[Rule] = &[
    // Access key ids are base32 after a type prefix (AKIA long-term, ASIA temporary, ...).
    Rule { name: "aws_access_key_id", pattern: r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA|A3T[A-Z0-9])[A-Z2-7]{16}(?-u:\b)", score: 0.95 },
    Rule { name: "github_token", pattern: r"(?-u:\b)gh[pousr]_[A-Za-z0-9]{36,255}(?-u:\b)", score: 0.97 },
    Rule { name: "github_token", pattern: r"(?-u:\b)github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}(?-u:\b)", score: 0.97 },
    Rule { name: "gitlab_token", pattern: r"(?-u:\b)gl(?:pat|dt|rt|ptt|ft|imt|agent|oas|soat|cbt|ffct)-[A-Za-z0-9_\-]{20,64}(?-u:\b)", score: 0.95 },
    Rule { name: "slack_token", pattern: r"(?-u:\b)xox[abposre]-(?:[0-9A-Za-z]+-){1,5}[0-9A-Za-z]{6,}(?-u:\b)", score: 0.95 },
    Rule { name: "slack_webhook", pattern: r"https://hooks\.slack\.com/(?:services|workflows)/T[A-Z0-9]{6,}/[A-Z0-9]{6,}/[A-Za-z0-9]{16,}", score: 0.95 },
    // The block's end is found in code (see `scan`), so a header without an end costs nothing.
    Rule { name: "private_key", pattern: r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----", score: 0.99 },
];

static COMPILED: LazyLock<Vec<(&'static Rule, Regex)>> =
    LazyLock::new(|| RULES.iter().map(|r| (r, Regex::new(r.pattern).expect("valid regex"))).collect());

static JWT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u:\b)eyJ[A-Za-z0-9_\-]{6,}\.eyJ[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]{8,}").expect("valid regex")
});

/// `name = value`, `name: "value"`, `"name": "value"`, `NAME=value` where the name says key,
/// token, secret or password.
static ASSIGNMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r#"(?i)([A-Za-z0-9_.\-]*(?:api[_\-]?key|apikey|secret|token|passw(?:or)?d|pwd|access[_\-]?key|auth[_\-]?key|"#,
        r#"client[_\-]?secret|private[_\-]?key|credentials?|signing[_\-]?key|bearer)[A-Za-z0-9_.\-]*)["']?"#,
        r#"[ \t]*(?:=|:=|:|=>|\s)[ \t]*["']?([A-Za-z0-9+/=_\-.~]{16,256})"#,
    ))
    .expect("valid regex")
});

/// Shannon entropy in bits per character.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0usize; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| { let p = c as f64 / n; -p * p.log2() }).sum()
}

/// Values that are obviously not real secrets: placeholders, variable references, repeated chars.
fn placeholder(v: &str) -> bool {
    let l = v.to_ascii_lowercase();
    ["example", "xxxx", "your", "changeme", "placeholder", "dummy", "redacted", "sample", "replace", "insert", "<", "${", "{{", "****", "none", "null", "undefined", "todo", "fixme"]
        .iter()
        .any(|p| l.contains(p))
        || v.chars().all(|c| c == v.chars().next().unwrap_or(' '))
}

fn classes(v: &str) -> usize {
    [v.chars().any(|c| c.is_ascii_lowercase()), v.chars().any(|c| c.is_ascii_uppercase()), v.chars().any(|c| c.is_ascii_digit())]
        .iter()
        .filter(|b| **b)
        .count()
}

fn jwt_header_ok(token: &str) -> bool {
    let header = token.split('.').next().unwrap_or("");
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|v| v.get("alg").is_some())
}

pub fn scan(text: &str) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    let push = |out: &mut Vec<Finding>, rule: &str, start: usize, end: usize, score: f64, detail: Option<String>| {
        out.push(Finding { rule: rule.to_string(), category: "secret".into(), start, end, score, detail });
    };
    for (rule, re) in COMPILED.iter() {
        for m in re.find_iter(text) {
            let mut score = rule.score;
            let mut end = m.end();
            if rule.name == "private_key" {
                // Extend to the matching END line, if it comes within 64 KiB; a header alone is
                // still a leaked key (truncated).
                const END: &str = "-----END ";
                if let Some(i) = substr(text, m.end(), m.end().saturating_add(65536)).find(END) {
                    let rest = m.end() + i + END.len();
                    if let Some(j) = substr(text, rest, text.len()).find("-----") {
                        end = rest + j + "-----".len();
                    }
                }
            }
            if rule.name == "aws_access_key_id" && m.as_str().ends_with("EXAMPLE") {
                score = 0.3; // AWS's documentation key
            }
            push(&mut out, rule.name, m.start(), end, score, None);
        }
    }
    for m in JWT.find_iter(text) {
        if jwt_header_ok(m.as_str()) {
            push(&mut out, "jwt", m.start(), m.end(), 0.9, None);
        }
    }
    // Spans the format rules found, sorted, to skip assignments they already cover (a binary
    // search, so long inputs stay linear).
    let mut covered: Vec<(usize, usize)> = out.iter().map(|f| (f.start, f.end)).collect();
    covered.sort_unstable();
    let mut max_end = 0;
    let reach: Vec<usize> = covered.iter().map(|&(_, e)| { max_end = max_end.max(e); max_end }).collect();
    for c in ASSIGNMENT.captures_iter(text) {
        // Both groups are mandatory in the pattern; a match without them is skipped, not a panic.
        let (Some(name), Some(value)) = (c.get(1), c.get(2)) else { continue };
        let v = value.as_str().trim_end_matches(['.', '=']);
        let end = value.start() + v.len();
        // Spans starting before `end` whose furthest end passes the value's start overlap it.
        let before = covered.partition_point(|&(s, _)| s < end);
        if before > 0 && reach[before - 1] > value.start() {
            continue; // already found by a format rule
        }
        if v.len() < 16 || placeholder(v) || v.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let lname = name.as_str().to_ascii_lowercase();
        // Names that carry a key-like word but hold no secret.
        if ["token_count", "tokens", "max_token", "token_type", "token_url", "token_endpoint", "tokenizer", "_hash", "_id", "_file", "_path", "_name", "_length", "_len", "_size", "_ttl", "_expiry", "_expires"]
            .iter()
            .any(|w| lname.contains(w))
        {
            continue;
        }
        let h = entropy(v);
        let hex = v.chars().all(|c| c.is_ascii_hexdigit());
        // Hex can carry at most 4 bits a char; other alphabets up to 6.
        let strong = if hex { h >= 3.0 && v.len() >= 32 } else { h >= 3.5 && classes(v) >= 2 };
        if !strong {
            continue;
        }
        let aws_secret = v.len() == 40 && (lname.contains("aws") || lname.contains("secret_access"));
        let rule = if aws_secret { "aws_secret_access_key" } else { "high_entropy_assignment" };
        let score = if aws_secret { 0.95 } else { (0.55 + (h - 3.5) * 0.25).clamp(0.55, 0.9) };
        push(&mut out, rule, value.start(), end, score, Some(format!("{} = entropy {h:.2} bits/char", name.as_str())));
    }
    out.sort_by_key(|f| (f.start, f.end));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(text: &str) -> Vec<(String, String)> {
        scan(text).into_iter().filter(|f| f.score >= 0.5).map(|f| (f.rule, text[f.start..f.end].to_string())).collect()
    }

    #[test]
    fn provider_formats_and_keys() {
        let key = "AKIAQ3EGRUZ6K2V7XW4M";
        assert_eq!(hits(&format!("id={key}")), [("aws_access_key_id".into(), key.into())]);
        assert!(hits("AKIAIOSFODNN7EXAMPLE").is_empty());
        let gh = "ghp_Zx9k2LmQ8rT4vB7nW1cY6pD3sF5gH0jK2aLq";
        assert_eq!(hits(&format!("token {gh}"))[0].0, "github_token");
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx\nabc+/=\n-----END RSA PRIVATE KEY-----";
        assert_eq!(hits(&format!("key:\n{pem}\nend")), [("private_key".into(), pem.into())]);
    }

    #[test]
    fn jwt_needs_a_json_header() {
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(hits(jwt)[0].0, "jwt");
        assert!(hits("eyJub3RqdXN0.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmN").is_empty());
    }

    #[test]
    fn entropy_near_key_names() {
        let v = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQ9a8s7D6f";
        assert_eq!(hits(&format!("aws_secret_access_key = {v}")), [("aws_secret_access_key".into(), v.into())]);
        assert_eq!(hits("API_KEY=\"sk_9fQ2xL7pR4mZ8vK1nB6tC3wY\"")[0].0, "high_entropy_assignment");
        assert!(hits("api_key = \"your-api-key-here-please\"").is_empty());
        assert!(hits("sha256 = 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08").is_empty());
        assert!(hits("request_id: 123e4567-e89b-12d3-a456-426614174000").is_empty());
        assert!(hits("max_tokens = 4096, token_count = 123456789012345678").is_empty());
    }
}
