//! `outrigger`, the operator's command line: what an operator runs after
//! `helm install` to see whether the mesh is healthy, why traffic goes
//! where it goes, and what it looks like.
//!
//! Each command is a module with a pure part (what to print, tested alone)
//! and a thin edge (the cluster, a file, a proxy's admin port).
//!
//! | module | what it gives |
//! |---|---|
//! | [`analyze`] | `outrigger analyze`: the control plane's verdicts over files or the cluster |
//! | [`cluster`] | a kube client from the user's kubeconfig (`--kubeconfig`, `--context`) |
//! | [`inject`] | `outrigger inject`: the webhook's injection applied to manifests, offline |
//! | [`output`] | `-o table|json|yaml`, and tables with aligned columns |
//! | [`version`] | `outrigger version`: client, control plane, injector and proxies' versions |

pub mod analyze;
pub mod cluster;
pub mod inject;
pub mod output;
pub mod version;
