//! `escalator bench` (placeholder until the benchmark lands).
pub async fn run(_settings: crate::settings::Settings, _count: usize) -> Result<(), String> {
    Err("the benchmark is not built yet".into())
}
