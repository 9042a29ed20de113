//! The `sluice` command: coordinator, worker and client commands.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
