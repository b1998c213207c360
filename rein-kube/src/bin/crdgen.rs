//! Prints the CustomResourceDefinitions of the agent's resources as YAML:
//! `cargo run -p rein-kube --bin crdgen > deploy/crds.yaml`.
fn main() -> anyhow::Result<()> {
    print!("{}", rein_kube::crd::crds_yaml()?);
    Ok(())
}
