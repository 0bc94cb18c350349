//! The Grafana dashboard and the Prometheus alert rules, kept once in the
//! Helm chart's files/ (the chart ships them as a ConfigMap and a
//! PrometheusRule), are checked against reality: every expression parses
//! as PromQL, and every metric they use is exported by the real binaries
//! (scraped from their /metrics while they run). The operations guide is checked to
//! document every metric the binaries export, and every alert.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, Result};
use pushmesh_tests::{Client, System, metrics, post};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

const DASHBOARD: &str = "helm/pushmesh/files/pushmesh-dashboard.json";
const ALERTS: &str = "helm/pushmesh/files/pushmesh-alerts.yaml";

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

fn alerts() -> serde_yaml::Value {
    serde_yaml::from_str(&read(ALERTS)).expect("the alert rules are YAML")
}

/// (where, PromQL) for every query on the dashboard.
fn dashboard_exprs() -> Vec<(String, String)> {
    let d = dashboard();
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().expect("every target has an expr");
            out.push((format!("{DASHBOARD}: panel {:?}", p["title"].as_str().unwrap_or("?")), e.to_owned()));
        }
    }
    out
}

fn alert_rules() -> Vec<serde_yaml::Value> {
    let a = alerts();
    a["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

fn alert_exprs() -> Vec<(String, String)> {
    alert_rules()
        .iter()
        .map(|r| {
            let name = r["alert"].as_str().expect("alert name");
            (format!("{ALERTS}: {name}"), r["expr"].as_str().expect("expr").to_owned())
        })
        .collect()
}

/// Metric names in a PromQL expression (pushmesh's and the process metrics).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let quoted = start > 0 && bytes[start - 1] == b'"';
            if !quoted && (word.starts_with("pushmesh_") || word.starts_with("process_")) {
                names.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Series names a scrape offers: each `# TYPE`, plus a histogram's
/// `_bucket`, `_sum` and `_count`.
fn exported(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        out.insert(name.to_owned(), kind.to_owned());
        if kind == "histogram" || kind == "summary" {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{name}{suffix}"), kind.to_owned());
            }
        }
    }
    out
}

#[test]
fn every_expression_is_valid_promql() {
    // The parser is strict enough to catch a slip.
    assert!(promql_parser::parser::parse("sum(rate(pushmesh_hub_deliveries_total[5m])").is_err());
    assert!(promql_parser::parser::parse("sum by (le) rate(x[5m])").is_err());
    let mut bad = Vec::new();
    for (place, expr) in dashboard_exprs().into_iter().chain(alert_exprs()) {
        // Grafana's interval variable is substituted before Prometheus sees it.
        let e = expr.replace("$__rate_interval", "5m");
        if let Err(err) = promql_parser::parser::parse(&e) {
            bad.push(format!("{place}: {expr}\n    {err}"));
        }
    }
    assert!(bad.is_empty(), "invalid PromQL:\n{}", bad.join("\n"));
}

#[test]
fn the_dashboard_covers_what_operators_watch() {
    let d = dashboard();
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "duplicate panel id {}", p["id"]);
        assert!(p["gridPos"]["w"].as_u64().is_some(), "panel {} has a position", p["title"]);
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {} uses the datasource variable", p["title"]);
            assert!(!p["targets"].as_array().expect("targets").is_empty(), "panel {} queries something", p["title"]);
            assert!(
                p["description"].as_str().is_some_and(|s| !s.is_empty()),
                "panel {} says what it shows",
                p["title"]
            );
        }
    }
    let all: String = dashboard_exprs().into_iter().map(|(_, e)| e + "\n").collect();
    for (what, needle) in [
        ("connections", "pushmesh_gateway_connections"),
        ("deliveries/s", "rate(pushmesh_gateway_deliveries_total"),
        ("drops by reason", "sum by (reason) (rate(pushmesh_gateway_dropped_total"),
        ("hub drops by reason", "sum by (reason) (rate(pushmesh_hub_dropped_total"),
        (
            "publish latency",
            "histogram_quantile(0.99, sum by (le) (rate(pushmesh_ingress_publish_duration_seconds_bucket",
        ),
        ("hub streams", "pushmesh_hub_gateways_attached"),
    ] {
        assert!(all.contains(needle), "the dashboard shows {what} ({needle})");
    }
    assert_eq!(d["templating"]["list"][0]["type"], "datasource");
}

#[test]
fn every_alert_is_complete_and_documented() {
    let ops = read("docs/operations.md");
    let rules = alert_rules();
    assert!(rules.len() >= 5, "alert rules exist");
    for r in &rules {
        let name = r["alert"].as_str().expect("alert");
        assert!(r["for"].as_str().is_some(), "{name} has a `for` (no alert on a single bad scrape)");
        let sev = r["labels"]["severity"].as_str().unwrap_or_default();
        assert!(["critical", "warning", "info"].contains(&sev), "{name} has a severity label, not {sev:?}");
        for k in ["summary", "description", "runbook"] {
            assert!(r["annotations"][k].as_str().is_some_and(|s| !s.is_empty()), "{name} has annotation {k}");
        }
        let anchor = format!("docs/operations.md#{}", name.to_lowercase());
        assert_eq!(r["annotations"]["runbook"].as_str(), Some(anchor.as_str()), "{name}'s runbook link");
        assert!(
            ops.contains(&format!("#### {name}\n")),
            "docs/operations.md has a `#### {name}` section (its runbook)"
        );
    }
}

/// Start the real binaries, make every labelled series appear (a client,
/// a subscribe, publishes of each kind, an error), and scrape them all.
#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_use_is_exported_and_documented() -> Result<()> {
    let sys = System::start(1, 1).await?;
    let mut c = Client::connect(sys.gw(0), "").await?;
    c.subscribe("news").await?;
    for (route, body) in [
        ("/publish", json!({"channel": "news", "data": 1})),
        ("/broadcast", json!({"data": 2})),
        ("/send", json!({"connection": c.connection, "data": 3})),
        ("/send", json!({"user": "nobody", "data": 4})),
    ] {
        let (code, v) = post(sys.api(), route, &body).await?;
        assert_eq!(code, 200, "{route}: {v}");
    }
    for want in [json!(1), json!(2), json!(3)] {
        c.expect_data(&want).await?;
    }
    let (code, _) = post(sys.api(), "/publish", &json!({"channel": "bad name", "data": 0})).await?;
    assert_eq!(code, 400);
    // Queries to the gateways (their counters appear on first use).
    let (code, _) = pushmesh_tests::get(sys.api(), "/stats").await?;
    assert_eq!(code, 200);
    let (code, _) = pushmesh_tests::get(sys.api(), "/presence/news").await?;
    assert_eq!(code, 200);

    let hub_admin = sys.hubs[0].addr("admin");
    let mut offered = BTreeMap::new();
    let mut by_service = Vec::new();
    for (service, addr) in [("hub", hub_admin), ("ws-gateway", sys.gw(0)), ("http-ingress", sys.api())] {
        let text = metrics(addr).await.with_context(|| format!("scraping {service}"))?;
        let names = exported(&text);
        by_service.push((service, names.keys().filter(|n| n.starts_with("pushmesh_")).count()));
        offered.extend(names);
    }
    for (service, n) in &by_service {
        assert!(*n > 0, "{service} exports pushmesh metrics");
    }

    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for (place, expr) in dashboard_exprs().into_iter().chain(alert_exprs()) {
        for name in metric_names(&expr) {
            if !offered.contains_key(&name) {
                missing.push(format!("{name} (used by {place})"));
            }
            used.insert(name);
        }
    }
    assert!(used.len() >= 15, "the dashboard and alerts use the metrics: {used:?}");
    assert!(missing.is_empty(), "used but not exported by any binary:\n  {}", missing.join("\n  "));

    // Every pushmesh metric a binary exports is explained in the operations guide.
    let ops = read("docs/operations.md");
    let undocumented: Vec<&String> = offered
        .iter()
        .filter(|(n, kind)| {
            n.starts_with("pushmesh_")
                && !((kind.as_str() == "histogram")
                    && (n.ends_with("_bucket") || n.ends_with("_sum") || n.ends_with("_count")))
        })
        .map(|(n, _)| n)
        .filter(|n| !ops.contains(&format!("`{n}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but not documented in docs/operations.md (add a row to its metrics table): {undocumented:?}"
    );
    Ok(())
}

#[test]
fn metric_names_are_found_in_expressions() {
    let e = r#"sum by (reason) (rate(pushmesh_gateway_dropped_total{reason="pushmesh_not_a_metric"}[5m])) and on (instance) process_resident_memory_bytes"#;
    let names: Vec<String> = metric_names(e).into_iter().collect();
    assert_eq!(names, ["process_resident_memory_bytes", "pushmesh_gateway_dropped_total"]);
}
