//! `cargo run -p cacheobj-service`: the service on SQLite and the embedded cache unless
//! `DATABASE_URL` and `CACHE_URL` say otherwise.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // Logs to stderr; `RUST_LOG=cacheobj=debug,cacheobj_service=debug` for more.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cacheobj_service::Config::from_env() {
        Ok(config) => cacheobj_service::run(config).await,
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cacheobj-service: {e}");
            ExitCode::FAILURE
        }
    }
}
