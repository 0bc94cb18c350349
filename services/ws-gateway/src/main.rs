use clap::Parser;
use pushmesh_ws_gateway::{Config, Gateway};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.log.init();
    config.runtime.build()?.block_on(async move {
        let gateway = Gateway::bind(config).await?;
        pushmesh_common::announce::listening("ws-gateway", &[("http", gateway.local_addr())]);
        tracing::info!(gateway = %gateway.id(), addr = %gateway.local_addr(), "ws-gateway listening");
        let shutdown = pushmesh_common::shutdown::on_signal();
        gateway.run(shutdown).await
    })
}
