//! `pushmesh publish`: one API call (`/publish`, `/broadcast` or `/send`)
//! with the data taken from an argument or stdin.

use std::io::{IsTerminal, Read};

use serde_json::{Value, json};

use crate::api::Api;
use crate::cli::PublishArgs;
use crate::failure::{Failure, Result};

pub async fn run(args: PublishArgs) -> Result<()> {
    let text = match args.data.as_deref() {
        Some("-") | None => read_stdin()?,
        Some(d) => d.to_owned(),
    };
    let data = interpret(&text, args.string, args.json)?;
    let (route, body, target) = request(&args, data)?;
    let api = Api::new(&args.ingress)?;
    let resp = api.post(route, &body).await?;
    if args.output_json {
        println!("{resp}");
    } else {
        let gateways = resp["gateways"].as_u64().unwrap_or(0);
        let reach = match gateways {
            0 => "no gateway has a recipient right now".to_owned(),
            1 => "1 gateway has recipients".to_owned(),
            n => format!("{n} gateways have recipients"),
        };
        println!("published to {target} ({reach})");
    }
    Ok(())
}

/// The route, its body, and a phrase naming the target.
fn request(args: &PublishArgs, data: Value) -> Result<(&'static str, Value, String)> {
    let exclude_ok = args.broadcast || args.user.is_some();
    if !args.exclude.is_empty() && !exclude_ok {
        return Err(Failure::usage("--exclude works with --broadcast and --user only"));
    }
    if let Some(c) = &args.channel {
        return Ok(("publish", json!({ "channel": c, "data": data }), format!("channel {c}")));
    }
    if args.broadcast {
        let mut body = json!({ "data": data });
        if !args.exclude.is_empty() {
            body["exclude"] = json!(args.exclude);
        }
        return Ok(("broadcast", body, "everyone".to_owned()));
    }
    if let Some(c) = &args.connection {
        return Ok(("send", json!({ "connection": c, "data": data }), format!("connection {c}")));
    }
    if let Some(u) = &args.user {
        let mut body = json!({ "user": u, "data": data });
        if !args.exclude.is_empty() {
            body["exclude"] = json!(args.exclude);
        }
        return Ok(("send", body, format!("user {u}")));
    }
    Err(Failure::usage("say where to publish: --channel NAME, --broadcast, --connection ID or --user ID"))
}

/// Text → the JSON value to publish.
pub fn interpret(text: &str, force_string: bool, require_json: bool) -> Result<Value> {
    if force_string {
        return Ok(Value::String(text.to_owned()));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok(v),
        Err(e) if require_json => Err(Failure::usage(format!("the data is not valid JSON ({e})"))
            .hint("drop --json to send it as a string, or fix the JSON (quote keys and strings with \")")),
        Err(_) => Ok(Value::String(text.to_owned())),
    }
}

fn read_stdin() -> Result<String> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(Failure::usage("no data to publish").hint(
            "give it as an argument (pushmesh publish --channel news hello) or pipe it in \
             (echo '{\"text\":\"hi\"}' | pushmesh publish --channel news)",
        ));
    }
    let mut s = String::new();
    stdin.read_to_string(&mut s).map_err(|e| Failure::failed(format!("reading the data from stdin: {e}")))?;
    // `echo` adds a newline that is not part of the message.
    let trimmed = s.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&s);
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_json_when_it_parses_and_a_string_otherwise() {
        assert_eq!(interpret(r#"{"a":1}"#, false, false).unwrap(), json!({"a":1}));
        assert_eq!(interpret("42", false, false).unwrap(), json!(42));
        assert_eq!(interpret("hello world", false, false).unwrap(), json!("hello world"));
        assert_eq!(interpret("42", true, false).unwrap(), json!("42"));
        let e = interpret("{oops", false, true).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{e}");
    }
}
