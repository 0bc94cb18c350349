//! Logs written to a file (every process here logs to one) are plain text:
//! no ANSI colour codes, which only a terminal understands.

use pushmesh_tests::*;

#[tokio::test]
async fn logs_redirected_to_a_file_carry_no_colour_codes() -> anyhow::Result<()> {
    let sys = System::start(1, 1).await?;
    // Something for each service to log: a client comes and goes.
    let c = Client::connect(sys.gw(0), "").await?;
    drop(c);
    for p in sys.hubs.iter().chain(&sys.gateways).chain([&sys.ingress]) {
        let log = eventually(&format!("{} to log something", p.name), || async {
            let l = p.logs();
            (!l.trim().is_empty()).then_some(l)
        })
        .await?;
        assert!(log.contains("INFO"), "{} logs in the text format: {log}", p.name);
        assert!(!log.contains('\x1b'), "{}'s log file has ANSI escape codes: {log:?}", p.name);
    }
    Ok(())
}
