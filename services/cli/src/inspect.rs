//! `pushmesh stats`, `pushmesh presence` and `pushmesh history`: the ingress's query routes,
//! rendered as tables (or passed through as JSON with `--json`).

use serde_json::Value;

use crate::api::Api;
use crate::cli::{HistoryArgs, PresenceArgs, StatsArgs};
use crate::failure::Result;
use crate::table::Table;

pub async fn stats(args: StatsArgs) -> Result<()> {
    let api = Api::new(&args.ingress)?;
    let v = api.get(&["stats"], &[]).await?;
    if args.json {
        println!("{v}");
    } else {
        print!("{}", render_stats(&v));
    }
    Ok(())
}

pub fn render_stats(v: &Value) -> String {
    let mut out = format!(
        "connections  {}\nchannels     {}\n\n",
        v["connections"].as_u64().unwrap_or(0),
        v["channels"].as_u64().unwrap_or(0)
    );
    let gateways = v["gateways"].as_array().cloned().unwrap_or_default();
    if gateways.is_empty() {
        out.push_str("no gateway answered: is a ws-gateway running and attached to the hubs?\n");
    } else {
        let mut t = Table::new(&[("GATEWAY", false), ("CONNECTIONS", true), ("CHANNELS", true)]);
        for g in &gateways {
            t.row(vec![
                g["gateway"].as_str().unwrap_or("?").to_owned(),
                g["connections"].as_u64().unwrap_or(0).to_string(),
                g["channels"].as_u64().unwrap_or(0).to_string(),
            ]);
        }
        out.push_str(&t.render());
    }
    if v["partial"].as_bool() == Some(true) {
        out.push_str("(partial: some gateways did not answer in time; the figures may be low)\n");
    }
    out
}

pub async fn presence(args: PresenceArgs) -> Result<()> {
    let api = Api::new(&args.ingress)?;
    let query: Vec<(&str, String)> = args.limit.map(|l| ("limit", l.to_string())).into_iter().collect();
    let v = api.get(&["presence", &args.channel], &query).await?;
    if args.json {
        println!("{v}");
    } else {
        print!("{}", render_presence(&v));
    }
    Ok(())
}

pub fn render_presence(v: &Value) -> String {
    let connections = v["connections"].as_u64().unwrap_or(0);
    let users = v["users"].as_u64().unwrap_or(0);
    let mut out = format!(
        "channel {}: {connections} connection{}, {users} user{}\n",
        v["channel"].as_str().unwrap_or("?"),
        if connections == 1 { "" } else { "s" },
        if users == 1 { "" } else { "s" }
    );
    let clients = v["clients"].as_array().cloned().unwrap_or_default();
    if !clients.is_empty() {
        out.push('\n');
        let mut t = Table::new(&[("CONNECTION", false), ("USER", false)]);
        for c in &clients {
            t.row(vec![
                c["connection"].as_str().unwrap_or("?").to_owned(),
                c["user"].as_str().unwrap_or("-").to_owned(),
            ]);
        }
        out.push_str(&t.render());
        if (clients.len() as u64) < connections {
            out.push_str(&format!("… and {} more (raise --limit)\n", connections - clients.len() as u64));
        }
    }
    if v["partial"].as_bool() == Some(true) {
        out.push_str("(partial: some gateways did not answer in time; the figures may be low)\n");
    }
    out
}

pub async fn history(args: HistoryArgs) -> Result<()> {
    let api = Api::new(&args.ingress)?;
    let mut query: Vec<(&str, String)> = vec![("channel", args.channel.clone())];
    query.extend(args.since.map(|s| ("since", s)));
    query.extend(args.limit.map(|l| ("limit", l.to_string())));
    let v = api.get(&["history"], &query).await?;
    if args.json {
        println!("{v}");
    } else {
        print!("{}", render_history(&v));
    }
    Ok(())
}

pub fn render_history(v: &Value) -> String {
    let channel = v["channel"].as_str().unwrap_or("?");
    let epoch = v["epoch"].as_str().unwrap_or_default();
    if epoch.is_empty() {
        return format!("channel {channel}: no history (nothing published recently)\n");
    }
    let messages = v["messages"].as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "channel {channel}: epoch {epoch}, offset {}, {} message{} shown\n",
        v["offset"].as_u64().unwrap_or(0),
        messages.len(),
        if messages.len() == 1 { "" } else { "s" }
    );
    if v["recovered"].as_bool() == Some(false) {
        out.push_str("(messages after that position are no longer kept: trimmed, expired or another epoch)\n");
    }
    if !messages.is_empty() {
        out.push('\n');
        let mut t = Table::new(&[("OFFSET", true), ("DATA", false)]);
        for m in &messages {
            t.row(vec![m["offset"].as_u64().unwrap_or(0).to_string(), m["data"].to_string()]);
        }
        out.push_str(&t.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stats_table() {
        let v = json!({"connections":3,"channels":2,"gateways":[{"gateway":"gw-local","connections":3,"channels":2}],"partial":false});
        assert_eq!(
            render_stats(&v),
            "connections  3\nchannels     2\n\nGATEWAY   CONNECTIONS  CHANNELS\ngw-local            3         2\n"
        );
    }

    #[test]
    fn presence_table() {
        let v = json!({"channel":"news","connections":3,"users":1,"clients":[{"connection":"gw-a:1","user":"alice"},{"connection":"gw-a:2"}],"partial":false});
        assert_eq!(
            render_presence(&v),
            "channel news: 3 connections, 1 user\n\nCONNECTION  USER\ngw-a:1      alice\ngw-a:2      -\n… and 1 more (raise --limit)\n"
        );
    }

    #[test]
    fn history_table() {
        let v = json!({"channel":"news","epoch":"e1","offset":42,"messages":[{"offset":41,"data":{"t":"hi"}},{"offset":42,"data":"x"}]});
        assert_eq!(
            render_history(&v),
            "channel news: epoch e1, offset 42, 2 messages shown\n\nOFFSET  DATA\n    41  {\"t\":\"hi\"}\n    42  \"x\"\n"
        );
        let gone = json!({"channel":"news","epoch":"e2","offset":3,"recovered":false,"messages":[]});
        assert!(render_history(&gone).contains("no longer kept"));
        assert_eq!(
            render_history(&json!({"channel":"n","epoch":"","offset":0,"messages":[]})),
            "channel n: no history (nothing published recently)\n"
        );
    }
}
