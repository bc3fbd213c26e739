//! Reports of evaluation runs: one self-contained HTML file (inline SVG charts, every dataset
//! string escaped by the template engine's HTML auto-escaping), a Markdown summary fit for a
//! CI comment (every dataset string a code span), and the JSON record. `compare` renders the
//! deltas between two runs.

use std::fmt::Write;

use crate::evals::record::{Delta, EvalRecord};

const HTML_TEMPLATE: &str = include_str!("../../reports/templates/report.html");

/// Escapes text for HTML and SVG (element content and attribute values).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A horizontal bar chart; bars may carry an interval (whiskers). Values are clamped to
/// [min(0, lo), hi] of the data.
pub fn svg_bars(title: &str, bars: &[(String, f64, Option<(f64, f64)>)]) -> String {
    let row = 22.0;
    let label_w = 260.0;
    let plot_w = 360.0;
    let height = 30.0 + row * bars.len() as f64 + 20.0;
    let lo = bars.iter().flat_map(|(_, v, ci)| [*v, ci.map_or(*v, |c| c.0)]).fold(0.0f64, f64::min);
    let hi = bars.iter().flat_map(|(_, v, ci)| [*v, ci.map_or(*v, |c| c.1)]).fold(1e-9f64, f64::max);
    let x = |v: f64| label_w + (v - lo) / (hi - lo) * plot_w;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" role="img" aria-label="{t}"><text x="4" y="16" font-weight="bold">{t}</text>"#,
        w = label_w + plot_w + 80.0,
        t = escape(title)
    );
    let _ = write!(s, r##"<line x1="{0}" y1="24" x2="{0}" y2="{1}" stroke="#888"/>"##, x(0.0), height - 16.0);
    for (i, (label, v, ci)) in bars.iter().enumerate() {
        let y = 28.0 + row * i as f64;
        let (x0, x1) = (x(0.0).min(x(*v)), x(0.0).max(x(*v)));
        let _ = write!(
            s,
            r##"<text x="{lx}" y="{ty}" text-anchor="end" font-size="12">{l}</text><rect x="{x0}" y="{y}" width="{bw}" height="{bh}" fill="{fill}"/><text x="{vx}" y="{ty}" font-size="11">{v:.3}</text>"##,
            lx = label_w - 6.0,
            ty = y + 13.0,
            l = escape(label),
            bw = (x1 - x0).max(0.5),
            bh = row - 6.0,
            fill = if *v < 0.0 { "#c0504d" } else { "#4f81bd" },
            vx = label_w + plot_w + 6.0,
        );
        if let Some((a, b)) = ci {
            let cy = y + (row - 6.0) / 2.0;
            let _ = write!(
                s,
                r##"<line x1="{a}" y1="{cy}" x2="{b}" y2="{cy}" stroke="#222"/><line x1="{a}" y1="{y0}" x2="{a}" y2="{y1}" stroke="#222"/><line x1="{b}" y1="{y0}" x2="{b}" y2="{y1}" stroke="#222"/>"##,
                a = x(*a),
                b = x(*b),
                y0 = cy - 4.0,
                y1 = cy + 4.0
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// The self-contained HTML report.
pub fn html(record: &EvalRecord) -> Result<String, String> {
    let metric_bars: Vec<(String, f64, Option<(f64, f64)>)> = record
        .metrics
        .iter()
        .map(|m| (format!("{} · {}", m.benchmark, m.metric), m.estimate.value, Some((m.estimate.low, m.estimate.high))))
        .collect();
    let mut charts = Vec::new();
    if !metric_bars.is_empty() {
        charts.push(svg_bars("Metrics (95% bootstrap intervals)", &metric_bars));
    }
    for b in &record.breakdowns {
        let bars: Vec<_> = b.slices.iter().map(|(k, e)| (k.clone(), e.value, Some((e.low, e.high)))).collect();
        charts.push(svg_bars(&format!("{} · {} by {}", b.benchmark, b.metric, b.column), &bars));
    }
    for (set, cats) in &record.bbq {
        let mut bars = Vec::new();
        for (cat, s) in cats {
            if let Some(v) = s.bias_ambiguous {
                bars.push((format!("{cat} s_AMB"), v, s.bias_ambiguous_interval.map(|[a, b]| (a, b))));
            }
            if let Some(v) = s.bias_disambiguated {
                bars.push((format!("{cat} s_DIS"), v, s.bias_disambiguated_interval.map(|[a, b]| (a, b))));
            }
        }
        if !bars.is_empty() {
            charts.push(svg_bars(&format!("BBQ bias scores: {set} (95% bootstrap intervals)"), &bars));
        }
    }
    if !record.filter_counts.is_empty() {
        let bars: Vec<_> = record.filter_counts.iter().map(|(k, v)| (k.clone(), *v as f64, None)).collect();
        charts.push(svg_bars("Filter decisions", &bars));
    }
    let mut env = minijinja::Environment::new();
    // The name ends in .html: minijinja escapes every interpolated value for HTML.
    env.add_template("report.html", HTML_TEMPLATE).map_err(|e| e.to_string())?;
    // `ci(value, [low, high])`: a value with its interval (see `with_interval`).
    env.add_function("ci", |value: Option<f64>, interval: Option<Vec<f64>>| {
        with_interval(value, interval.and_then(|i| <[f64; 2]>::try_from(i).ok()))
    });
    let tmpl = env.get_template("report.html").map_err(|e| e.to_string())?;
    let charts: Vec<minijinja::Value> = charts.into_iter().map(minijinja::Value::from_safe_string).collect();
    tmpl.render(minijinja::context! {
        r => minijinja::Value::from_serialize(record),
        charts => charts,
        failed_gates => record.failed_gates().len(),
    })
    .map_err(|e| format!("{e:#}"))
}

/// A dataset string as a Markdown code span: inside one nothing is a link, image, HTML or
/// emphasis, and GitHub makes no mentions or autolinks. Backslash escapes would not stop
/// those, and HTML entities would show as typed inside a code span.
fn md_code(s: &str) -> String {
    if s.is_empty() {
        return String::new();
    }
    // A line break would end the heading or table row.
    let text = s.replace(['\n', '\r'], " ");
    // The fence is longer than any run of backticks inside.
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    // CommonMark drops one space at each end when both ends are spaces: pad so that edge
    // backticks stay apart from the fence and edge spaces are kept.
    let pad = if !text.chars().all(|c| c == ' ') && (text.starts_with(['`', ' ']) || text.ends_with(['`', ' '])) { " " } else { "" };
    format!("{fence}{pad}{text}{pad}{fence}")
}

/// A dataset string in a table cell: a code span whose pipes are escaped (GFM splits cells
/// before it parses code spans, and takes `\|` as a pipe inside them).
fn md_cell(s: &str) -> String {
    md_code(s).replace('|', "\\|")
}

/// A value and its interval as the reports show them: `0.600 [0.300, 0.900]`; `–` without a
/// value, the value alone without an interval (records written before intervals were kept).
pub fn with_interval(value: Option<f64>, interval: Option<[f64; 2]>) -> String {
    match (value, interval) {
        (None, _) => "–".into(),
        (Some(v), None) => format!("{v:.3}"),
        (Some(v), Some([a, b])) => format!("{v:.3} [{a:.3}, {b:.3}]"),
    }
}

/// The Markdown summary (for a CI comment).
pub fn markdown(record: &EvalRecord) -> String {
    let mut s = String::new();
    let failed = record.failed_gates();
    let _ = writeln!(s, "## Evaluation {} — {}\n", md_code(&record.suite), if failed.is_empty() { "all gates passed" } else { "GATES FAILED" });
    if !record.metrics.is_empty() {
        let _ = writeln!(s, "| benchmark | metric | value | 95% CI | n |\n| --- | --- | ---: | --- | ---: |");
        for m in &record.metrics {
            let e = m.estimate;
            let _ = writeln!(s, "| {} | {} | {:.4} | [{:.4}, {:.4}] | {} |", md_cell(&m.benchmark), md_cell(&m.metric), e.value, e.low, e.high, e.n);
        }
        s.push('\n');
    }
    for (set, cats) in &record.bbq {
        let _ = writeln!(s, "**BBQ** {} (95% CI)\n\n| category | acc (ambig) | acc (disambig) | s_AMB | s_DIS |\n| --- | ---: | ---: | ---: | ---: |", md_code(set));
        for (cat, c) in cats {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                md_cell(cat),
                with_interval(c.accuracy_ambiguous, c.accuracy_ambiguous_interval),
                with_interval(c.accuracy_disambiguated, c.accuracy_disambiguated_interval),
                with_interval(c.bias_ambiguous, c.bias_ambiguous_interval),
                with_interval(c.bias_disambiguated, c.bias_disambiguated_interval)
            );
        }
        s.push('\n');
    }
    if let Some(x) = &record.safety {
        let auc = match x.policy_auc {
            Some(e) => format!("{} over {} prompts", with_interval(Some(e.value), Some([e.low, e.high])), e.n),
            None => "not measured".into(),
        };
        let _ = writeln!(
            s,
            "**Safety**: refusal rate {:.3} on {} harmful / {:.3} on {} benign prompts; policy flags {:.3} / {:.3}; policy-filter ROC AUC (95% CI) {auc}; PII in outputs {:.3}\n",
            x.refusal_rate_harmful.value, x.harmful, x.refusal_rate_benign.value, x.benign, x.policy_flag_rate_harmful.value,
            x.policy_flag_rate_benign.value, x.pii_leak_rate.value
        );
    }
    if !record.counterfactual.is_empty() {
        let _ = writeln!(
            s,
            "| probe | group | n | refusals | refusal gap (95% CI) | flags | mean tokens | p (refusal) | p (flags) | p (length) |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for g in &record.counterfactual {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.3} | {} | {:.3} | {:.1} | {:.3} | {:.3} | {:.3} |",
                md_cell(&g.probe),
                md_cell(&g.group),
                g.n,
                g.refusal_rate,
                with_interval(g.refusal_gap, g.refusal_gap_interval),
                g.flag_rate,
                g.mean_output_tokens,
                g.refusal_p_value,
                g.flag_p_value,
                g.length_p_value
            );
        }
        s.push('\n');
    }
    for n in &record.notes {
        let _ = writeln!(s, "**Note**: {}\n", md_code(n));
    }
    if !record.missing.is_empty() {
        let _ = writeln!(s, "**Missing outputs** (not scored)\n\n| part | items | without output | first ids |\n| --- | ---: | ---: | --- |");
        for m in &record.missing {
            let shown: Vec<String> = m.ids.iter().take(10).map(|id| md_cell(id)).collect();
            let more = if m.ids.len() > shown.len() { format!(" and {} more", m.ids.len() - shown.len()) } else { String::new() };
            let _ = writeln!(s, "| {} | {} | {} | {}{more} |", md_cell(&m.part), m.expected, m.ids.len(), shown.join(", "));
        }
        s.push('\n');
    }
    if !record.unmatched_predictions.is_empty() {
        let _ = writeln!(s, "{} predictions match no item of the suite (listed in record.json).\n", record.unmatched_predictions.len());
    }
    if !record.unreadable_predictions.is_empty() {
        let _ = writeln!(s, "{} rows of the predictions file could not be read (listed in record.json).\n", record.unreadable_predictions.len());
    }
    if !record.gates.is_empty() {
        let _ = writeln!(s, "| gate | rule | value | result |\n| --- | --- | ---: | --- |");
        for g in &record.gates {
            let v = g.value.map(|v| format!("{v:.4}")).unwrap_or_else(|| "missing".into());
            let result = match (&g.problem, g.passed) {
                (_, true) => "pass".to_string(),
                (Some(p), false) => format!("**FAIL** {}", md_cell(p)),
                (None, false) => "**FAIL**".to_string(),
            };
            let _ = writeln!(s, "| {} | {} {} | {} | {} |", md_cell(&g.name), md_cell(&g.kind), g.threshold, v, result);
        }
    }
    s
}

/// Markdown for `report --compare`.
pub fn compare_markdown(a: &EvalRecord, b: &EvalRecord, deltas: &[Delta]) -> String {
    let mut s = String::new();
    let regressions = deltas.iter().filter(|d| d.regression).count();
    let _ = writeln!(s, "## {} ({}) vs {} ({}): {} regression(s)\n", md_code(&a.suite), md_code(&a.run_id), md_code(&b.suite), md_code(&b.run_id), regressions);
    let _ = writeln!(s, "| benchmark | metric | A | B | delta | |\n| --- | --- | ---: | ---: | ---: | --- |");
    for d in deltas {
        let mark = match (&d.problem, d.regression, d.improvement) {
            (Some(p), _, _) => format!("**REGRESSION** ({p})"),
            (None, true, _) => "**REGRESSION**".into(),
            (None, false, true) => "improved".into(),
            _ => String::new(),
        };
        let b = d.b.map(|e| format!("{:.4} [{:.4}, {:.4}]", e.value, e.low, e.high)).unwrap_or_else(|| "missing".into());
        let delta = d.delta.map(|v| format!("{v:+.4}")).unwrap_or_else(|| "–".into());
        let _ = writeln!(s, "| {} | {} | {:.4} [{:.4}, {:.4}] | {} | {} | {} |", md_cell(&d.benchmark), md_cell(&d.metric), d.a.value, d.a.low, d.a.high, b, delta, mark);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evals::metrics::Estimate;
    use crate::evals::record::{MetricResult, MissingOutputs, Sample};

    #[test]
    fn html_escapes_dataset_strings() {
        let record = EvalRecord {
            suite: "t".into(),
            metrics: vec![MetricResult {
                benchmark: "<script>alert(1)</script>".into(),
                metric: "anls".into(),
                estimate: Estimate { value: 0.5, low: 0.4, high: 0.6, n: 10 },
            }],
            samples: vec![Sample {
                benchmark: "b".into(),
                input_id: "x".into(),
                input: "<img src=x onerror=alert(1)>".into(),
                output: Some("\"quoted\" & <b>".into()),
                references: vec![],
                score: Some(1.0),
                decisions: vec![],
            }],
            ..Default::default()
        };
        let html = html(&record).unwrap();
        assert!(!html.contains("<script>alert") && !html.contains("<img src=x"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        // Markdown shows it as code (see markdown_renders_dataset_strings_inert).
        let md = markdown(&record);
        assert!(md.contains("| `<script>alert(1)</script>` |"), "{md}");
    }

    #[test]
    fn bbq_scores_show_their_intervals() {
        use crate::evals::bbq::BbqScores;
        let scores = BbqScores {
            items: 10,
            accuracy_ambiguous: Some(0.4),
            accuracy_ambiguous_interval: Some([0.1, 0.7]),
            bias_ambiguous: Some(0.6),
            bias_ambiguous_interval: Some([0.3, 0.9]),
            ..Default::default()
        };
        let record = EvalRecord { bbq: [("set".to_string(), [("Age".to_string(), scores)].into_iter().collect())].into_iter().collect(), ..Default::default() };
        let md = markdown(&record);
        assert!(md.contains("| `Age` | 0.400 [0.100, 0.700] | – | 0.600 [0.300, 0.900] | – |"), "{md}");
        let page = html(&record).unwrap();
        assert!(page.contains("<td class=\"num\">0.600 [0.300, 0.900]</td>") && page.contains("<td class=\"num\">0.400 [0.100, 0.700]</td>"), "{page}");
        // A record written before intervals were kept reads, and shows the values alone.
        let old = r#"{"suite": "s", "run_id": "r", "created_at_ms": 0, "provenance": null, "metrics": [], "breakdowns": [],
            "bbq": {"set": {"Age": {"items": 4, "accuracy_ambiguous": 0.5, "accuracy_disambiguated": null, "bias_disambiguated": null, "bias_ambiguous": 0.25, "unparsed": 0}}}}"#;
        let old: EvalRecord = serde_json::from_str(old).unwrap();
        assert!(markdown(&old).contains("| `Age` | 0.500 | – | 0.250 | – |"), "{}", markdown(&old));
        assert!(html(&old).unwrap().contains("<td class=\"num\">0.250</td>"));
    }

    #[test]
    fn policy_auc_shows_with_its_interval() {
        use crate::evals::record::SafetyScores;
        let e = Estimate { value: 0.25, low: 0.0, high: 0.5, n: 24 };
        let mut safety = SafetyScores {
            harmful: 12,
            benign: 12,
            refusal_rate_harmful: e,
            refusal_rate_benign: e,
            policy_flag_rate_harmful: e,
            policy_flag_rate_benign: e,
            pii_leak_rate: e,
            policy_auc: Some(Estimate { value: 0.875, low: 0.625, high: 1.0, n: 24 }),
        };
        let record = EvalRecord { safety: Some(safety.clone()), ..Default::default() };
        assert!(markdown(&record).contains("policy-filter ROC AUC (95% CI) 0.875 [0.625, 1.000] over 24 prompts;"), "{}", markdown(&record));
        assert!(html(&record).unwrap().contains("<td class=\"num\" colspan=\"2\">0.875 [0.625, 1.000] (24 prompts)</td>"));
        safety.policy_auc = None;
        let record = EvalRecord { safety: Some(safety), ..Default::default() };
        assert!(markdown(&record).contains("policy-filter ROC AUC (95% CI) not measured;"));
        assert!(html(&record).unwrap().contains("<td class=\"num\" colspan=\"2\">not measured</td>"));
    }

    #[test]
    fn refusal_gaps_show_their_intervals() {
        use crate::evals::record::GroupRates;
        let g = GroupRates {
            probe: "p".into(),
            group: "g".into(),
            n: 4,
            refusal_rate: 0.75,
            flag_rate: 0.0,
            mean_output_tokens: 3.0,
            refusal_p_value: 0.2,
            flag_p_value: 1.0,
            length_p_value: 1.0,
            refusal_gap: Some(0.5),
            refusal_gap_interval: Some([0.125, 0.875]),
        };
        let record = EvalRecord { counterfactual: vec![g], ..Default::default() };
        assert!(markdown(&record).contains("| 0.750 | 0.500 [0.125, 0.875] | 0.000 |"), "{}", markdown(&record));
        assert!(html(&record).unwrap().contains("<td class=\"num\">0.500 [0.125, 0.875]</td>"));
    }

    /// Dataset strings that Markdown (or GitHub's rendering of it) would turn into markup.
    const HOSTILE: &[&str] = &[
        "[x](http://evil)",
        "![](http://evil/p.png)",
        "<http://evil>",
        "<img src=x onerror=alert(1)>",
        "<script>alert(1)</script>",
        "@team please look",
        "`tick` and ``two`` and ```",
        "a|b",
        "a\\|b",
        "line1\nline2\r\n| --- | --- |",
        "bare http://evil.example and www.evil.example and x@evil.example",
        "*emph* _emph_ **emph** ~~emph~~ $emph$",
        "# heading",
        "[ref]: http://evil",
        "[[evil]] [^evil]",
        "&lt;img&gt; &amp;",
        "nul\u{0} ls\u{2028} ps\u{2029}",
        " leading and trailing ",
        "ends in a backslash\\",
        "   ",
        "`",
        "",
    ];

    /// What a data string must read as in the rendered Markdown (one table cell, one line).
    fn shown(s: &str) -> String {
        // CommonMark has renderers show NUL as U+FFFD; parse_inert reads it so.
        s.replace(['\n', '\r'], " ").replace('\u{0}', "\u{fffd}")
    }

    /// Parses Markdown as GitHub does (and more: every extension on), checks that no link,
    /// image or HTML node appears and that data (the words in HOSTILE) shows only inside code
    /// spans, and returns the tables: rows of cells, each cell's text.
    fn parse_inert(md: &str) -> (Vec<Vec<Vec<String>>>, Vec<String>) {
        use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
        let mut tables: Vec<Vec<Vec<String>>> = Vec::new();
        let mut codes = Vec::new();
        let mut cell: Option<String> = None;
        for event in Parser::new_ext(md, Options::all()) {
            match &event {
                Event::Start(Tag::Link { .. } | Tag::Image { .. } | Tag::HtmlBlock) | Event::Html(_) | Event::InlineHtml(_) | Event::FootnoteReference(_) => {
                    panic!("markup from data: {event:?} in\n{md}")
                }
                Event::Text(t) => {
                    for word in ["evil", "onerror", "alert", "team", "emph", "heading", "line2", "tick"] {
                        assert!(!t.contains(word), "data outside a code span: {t:?} in\n{md}");
                    }
                }
                _ => {}
            }
            match event {
                Event::Start(Tag::Table(_)) => tables.push(Vec::new()),
                Event::Start(Tag::TableHead | Tag::TableRow) => tables.last_mut().unwrap().push(Vec::new()),
                Event::Start(Tag::TableCell) => cell = Some(String::new()),
                Event::End(TagEnd::TableCell) => tables.last_mut().unwrap().last_mut().unwrap().push(cell.take().unwrap()),
                Event::Text(t) => {
                    if let Some(c) = &mut cell {
                        c.push_str(&t.replace('\u{0}', "\u{fffd}"));
                    }
                }
                Event::Code(t) => {
                    let t = t.replace('\u{0}', "\u{fffd}");
                    if let Some(c) = &mut cell {
                        c.push_str(&t);
                    }
                    codes.push(t);
                }
                Event::SoftBreak | Event::HardBreak if cell.is_some() => panic!("a line break inside a table cell:\n{md}"),
                _ => {}
            }
        }
        (tables, codes)
    }

    fn hostile_record() -> EvalRecord {
        use crate::evals::bbq::BbqScores;
        use crate::evals::record::{GateResult, GroupRates};
        let e = Estimate { value: 0.5, low: 0.4, high: 0.6, n: 10 };
        let joined = HOSTILE.join(" ");
        EvalRecord {
            suite: joined.clone(),
            run_id: joined,
            metrics: HOSTILE.iter().map(|h| MetricResult { benchmark: h.to_string(), metric: h.to_string(), estimate: e }).collect(),
            bbq: HOSTILE
                .iter()
                .map(|h| (h.to_string(), [(h.to_string(), BbqScores { items: 3, accuracy_ambiguous: Some(0.5), ..Default::default() })].into_iter().collect()))
                .collect(),
            counterfactual: HOSTILE
                .iter()
                .map(|h| GroupRates {
                    probe: h.to_string(),
                    group: h.to_string(),
                    n: 2,
                    refusal_rate: 0.0,
                    flag_rate: 0.0,
                    mean_output_tokens: 3.0,
                    refusal_p_value: 1.0,
                    flag_p_value: 1.0,
                    length_p_value: 1.0,
                    refusal_gap: Some(-0.5),
                    refusal_gap_interval: Some([-1.0, 0.0]),
                })
                .collect(),
            samples: HOSTILE
                .iter()
                .map(|h| Sample { benchmark: h.to_string(), input_id: h.to_string(), input: h.to_string(), output: Some(h.to_string()), references: vec![h.to_string()], score: Some(1.0), decisions: vec![] })
                .collect(),
            gates: HOSTILE.iter().map(|h| GateResult { name: h.to_string(), kind: h.to_string(), threshold: 0.5, value: Some(0.5), passed: false, problem: Some(h.to_string()) }).collect(),
            missing: HOSTILE.iter().map(|h| MissingOutputs { part: h.to_string(), expected: 3, ids: vec![h.to_string(), "id-2".into()] }).collect(),
            unmatched_predictions: HOSTILE.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn markdown_renders_dataset_strings_inert() {
        let record = hostile_record();
        let md = markdown(&record);
        let (tables, codes) = parse_inert(&md);
        assert_eq!(codes[0], shown(&HOSTILE.join(" ")), "the suite's name in the heading");
        // Metrics, one BBQ table per set, counterfactual probes, missing outputs, gates.
        assert_eq!(tables.len(), 1 + HOSTILE.len() + 3, "{md}");
        let width = |t: &Vec<Vec<String>>| t[0].len();
        for t in &tables {
            assert_eq!(t.len(), 1 + if width(t) == 5 && t[0][0] == "category" { 1 } else { HOSTILE.len() }, "rows of {:?}:\n{md}", t[0]);
            for row in t {
                assert_eq!(row.len(), width(t), "{row:?}");
            }
        }
        for (i, h) in HOSTILE.iter().enumerate() {
            let want = shown(h);
            let metrics = &tables[0][1 + i];
            assert_eq!((&metrics[0], &metrics[1]), (&want, &want), "{md}");
            // BBQ sets come in name order.
            let set = HOSTILE.iter().filter(|o| o < &h).count();
            assert_eq!(tables[1 + set][1][0], want, "{md}");
            let cf = &tables[1 + HOSTILE.len()][1 + i];
            assert_eq!((&cf[0], &cf[1]), (&want, &want), "{md}");
            assert_eq!((cf[3].as_str(), cf[4].as_str()), ("0.000", "-0.500 [-1.000, 0.000]"), "the refusal gap and its interval");
            let missing = &tables[2 + HOSTILE.len()][1 + i];
            assert_eq!((&missing[0], &missing[2]), (&want, &"2".to_string()), "{md}");
            assert!(missing[3].starts_with(&want) && missing[3].ends_with("id-2"), "{missing:?}");
            let gates = &tables[3 + HOSTILE.len()][1 + i];
            assert_eq!(gates[0], want, "{md}");
            assert!(gates[1].starts_with(&want), "{gates:?}");
        }
        let (tables, codes) = parse_inert(&compare_markdown(&record, &record, &crate::evals::record::compare(&record, &record)));
        assert_eq!(codes[..2], [shown(&HOSTILE.join(" ")), shown(&HOSTILE.join(" "))]);
        assert_eq!(tables.len(), 1);
        for (i, h) in HOSTILE.iter().enumerate() {
            assert_eq!((&tables[0][1 + i][0], &tables[0][1 + i][1]), (&shown(h), &shown(h)));
        }
    }
}
