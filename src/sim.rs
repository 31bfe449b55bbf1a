//! TEMPORARY STUB: replaced by the simulator.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: std::net::SocketAddr,
}
impl Default for SimArgs {
    fn default() -> Self {
        SimArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
        }
    }
}
pub fn router(_args: SimArgs) -> axum::Router {
    axum::Router::new()
}
pub async fn serve(
    listener: tokio::net::TcpListener,
    args: SimArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(args))
        .with_graceful_shutdown(shutdown)
        .await
}
