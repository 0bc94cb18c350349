use clap::Parser;
use pushmesh_http_ingress::{Config, Ingress};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.log.init();
    config.runtime.build()?.block_on(async move {
        let ingress = Ingress::bind(config).await?;
        let mut addrs = vec![("http", ingress.local_addr()), ("grpc", ingress.grpc_addr())];
        if let Some((hub_grpc, hub_admin)) = ingress.colocated_hub_addrs() {
            addrs.extend([("hub-grpc", hub_grpc), ("hub-admin", hub_admin)]);
        }
        pushmesh_common::announce::listening("http-ingress", &addrs);
        tracing::info!(addr = %ingress.local_addr(), "http-ingress listening");
        let shutdown = pushmesh_common::shutdown::on_signal();
        ingress.run(shutdown).await
    })
}
