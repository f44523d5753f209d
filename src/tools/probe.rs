//! `ordersaga probe URL`: a health check for containers that have no curl.
//! It asks the URL once and succeeds on a 2xx answer.

use std::time::Duration;

use anyhow::{Context, bail};

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The URL to ask, e.g. http://127.0.0.1:8000/ready.
    pub url: String,
    /// Longest wait for the answer, in ms.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

pub async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .build()
        .context("cannot build an HTTP client")?;
    let response = client
        .get(&args.url)
        .send()
        .await
        .with_context(|| format!("no answer from {}", args.url))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{} answered {status}: {}", args.url, body.trim());
    }
    println!("{status} {}", body.trim());
    Ok(())
}
