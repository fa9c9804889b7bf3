//! The simulator in a process of its own (so that its CPU and memory are
//! not counted as the measured worker's).
use std::time::Duration;
use tokio::time::Instant;

async fn free_port() -> Result<u16, String> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("no free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Start `escalator sim` on a free port; the child (killed on drop) and
/// its base URL, once it answers.
pub async fn start() -> Result<(tokio::process::Child, String), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let port = free_port().await?;
    let sim_url = format!("http://127.0.0.1:{port}");
    let sim = tokio::process::Command::new(exe)
        .arg("sim")
        .arg("--addr")
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the simulator process: {e}"))?;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{sim_url}/_sim/health"))
        .send()
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err("the simulator process did not answer within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((sim, sim_url))
}
