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
//! | [`check`] | `outrigger check`: whether the installed mesh is healthy, one line per check |
//! | [`cluster`] | a kube client from the user's kubeconfig (`--kubeconfig`, `--context`) |
//! | [`demo`] | `outrigger demo`: the control plane, three apps and their proxies over mTLS on one machine |
//! | [`inject`] | `outrigger inject`: the webhook's injection applied to manifests, offline |
//! | [`output`] | `-o table|json|yaml`, and tables with aligned columns |
//! | [`prom`] | reading the Prometheus text a proxy's `/metrics` answers |
//! | [`proxy_admin`] | one proxy's admin port: at an address (`--local`), or a pod's through a port-forward or the API server's pod proxy |
//! | [`proxy_config`] | `outrigger proxy-config`: the configuration in force in one proxy |
//! | [`selector`] | Kubernetes label selectors held against labels (a webhook's namespace and object selectors) |
//! | [`stat`] | `outrigger stat`: golden metrics per workload from two scrapes a window apart |
//! | [`version`] | `outrigger version`: client, control plane, injector and proxies' versions |

pub mod analyze;
pub mod check;
pub mod cluster;
pub mod demo;
pub mod inject;
pub mod output;
pub mod prom;
pub mod proxy_admin;
pub mod proxy_config;
pub mod selector;
pub mod stat;
pub mod version;
