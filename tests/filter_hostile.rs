//! `gemma-batch filter` on hostile text: multi-byte characters right next to payment cards,
//! IBANs and other matches must not crash the binary, and the JSON it prints must name each
//! match with byte spans that slice the input line on char boundaries.
//!
//! Exit status of `filter`: 0 nothing fired, 1 something fired, 2 an item could not be
//! screened; a panic would be 101.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const CARD: &str = "4111 1111 1111 1111";
const IBAN: &str = "DE89 3704 0044 0532 0130 00";

/// Lines, each with the (rule, matched text) decisions it must carry.
const LINES: &[(&str, &[(&str, &str)])] = &[
    ("Réf 4111 1111 1111 1111", &[("card", CARD)]),
    ("Zoë’s IBAN: DE89 3704 0044 0532 0130 00…", &[("iban", IBAN)]),
    ("👍 4111 1111 1111 1111 👍", &[("card", CARD)]),
    ("Ré 4111 1111 1111 1111", &[("card", CARD)]),
    ("日本 Réf 4111 1111 1111 1111 für Straße", &[("card", CARD)]),
    ("שלום 4111 1111 1111 1111 \u{200F}", &[("card", CARD)]),
    ("e\u{301}e\u{301} 4111 1111 1111 1111\u{200D}👩\u{200D}💻", &[("card", CARD)]),
    ("Grüße, Zoë — zoë.müller@example.de, Réf 4111 1111 1111 1111", &[("email", "zoë.müller@example.de"), ("card", CARD)]),
    ("Straße 日 62704-1234 und IBAN DE89 3704 0044 0532 0130 00", &[("iban", IBAN)]),
];

fn filter(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemma-batch"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("filter")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("stdin takes the lines");
    child.wait_with_output().expect("the binary finishes")
}

/// Runs one set over all lines and checks status, stderr and every line's JSON.
fn check_set(args: &[&str], redacted: bool) {
    let input: String = LINES.iter().map(|(l, _)| format!("{l}\n")).collect();
    let out = filter(args, &input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{args:?}: matches fired, nothing failed (stderr: {stderr})");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let printed: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
    assert_eq!(printed.len(), LINES.len(), "one JSON object per input line: {stdout}");
    for (i, ((line, expected), v)) in LINES.iter().zip(&printed).enumerate() {
        assert_eq!(v["item"], format!("stdin:{}", i + 1));
        assert!(v["error"].is_null(), "{line:?}: {v}");
        let decisions = v["decisions"].as_array().expect("decisions");
        // Every span slices the input line on char boundaries.
        let mut matched = Vec::new();
        for d in decisions {
            let span = &d["span"];
            let (Some(a), Some(b)) = (span[0].as_u64(), span[1].as_u64()) else { panic!("{line:?}: span {span}") };
            let text = line.get(a as usize..b as usize);
            assert!(text.is_some(), "{line:?}: span {a}..{b} of {} is not on char boundaries ({d})", d["rule"]);
            matched.push((d["filter"].as_str().unwrap_or(""), d["rule"].as_str().unwrap_or(""), text.unwrap_or("")));
        }
        for &(rule, text) in *expected {
            assert!(
                matched.iter().any(|&(f, r, t)| f == "pii" && r == rule && t == text),
                "{args:?} {line:?}: no pii:{rule} decision covering exactly {text:?}; got {matched:?}"
            );
            if rule == "card" {
                let d = decisions.iter().find(|d| d["rule"] == "card").expect("card decision");
                assert_eq!(d["detail"], "visa", "{line:?}");
            }
        }
        // The printed text is the line with the matches rewritten, the rest untouched.
        let printed_text = v["text"].as_str().expect("text");
        for &(rule, text) in *expected {
            assert!(!printed_text.contains(text), "{line:?}: {rule} {text:?} is still in {printed_text:?}");
        }
        if redacted {
            let rebuilt = expected.iter().fold(line.to_string(), |acc, (rule, text)| acc.replacen(text, &format!("[{}]", rule.to_uppercase()), 1));
            assert_eq!(printed_text, rebuilt, "{line:?}");
        }
        assert_ne!(v["outcome"], "pass", "{line:?}");
    }
}

#[test]
fn pii_only_set_survives_multibyte_neighbours() {
    check_set(&["--set", "pii-only", "--json"], true);
}

#[test]
fn default_set_survives_multibyte_neighbours() {
    // The default set masks cards ("**** **** **** 1111") and redacts the rest.
    check_set(&["--set", "default", "--no-policy", "--json"], false);
}

#[test]
fn text_output_survives_too() {
    let out = filter(&["--set", "pii-only"], "Réf 4111 1111 1111 1111\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("pii:card") && stdout.contains("[5..24] \"4111 1111 1111 1111\""), "{stdout}");
    assert!(stdout.contains("=> Réf [CARD]"), "{stdout}");
}
