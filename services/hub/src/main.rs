use clap::Parser;
use pushmesh_hub::{Config, Hub};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.log.init();
    config.runtime.build()?.block_on(async move {
        let hub = Hub::bind(config).await?;
        pushmesh_common::announce::listening("hub", &[("grpc", hub.grpc_addr()), ("admin", hub.admin_addr())]);
        tracing::info!(grpc = %hub.grpc_addr(), admin = %hub.admin_addr(), "hub listening");
        let shutdown = pushmesh_common::shutdown::on_signal();
        hub.run(shutdown).await
    })
}
