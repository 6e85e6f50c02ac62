//! Who is asking for a certificate: a ServiceAccount, proven by a token.
//! In a cluster the token is a projected ServiceAccount token (audience
//! `outrigger`) checked with a TokenReview; in local mode it is a bootstrap
//! token file per workload, `<dir>/<namespace>/<service-account>`.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::Api;
use outrigger_api::certify::TOKEN_AUDIENCE;

/// The ServiceAccount a token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    /// The token is not valid for a ServiceAccount of this mesh.
    #[error("token refused: {0}")]
    Refused(String),
    /// The token could not be checked (the API server is away).
    #[error("cannot check the token: {0}")]
    Unavailable(String),
}

pub type AuthnFuture<'a> = Pin<Box<dyn Future<Output = Result<Caller, AuthnError>> + Send + 'a>>;

pub trait Authenticate: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthnFuture<'a>;
}

/// Kubernetes: a TokenReview for the `outrigger` audience.
pub struct TokenReviewer {
    client: kube::Client,
}

impl TokenReviewer {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl Authenticate for TokenReviewer {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthnFuture<'a> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_string()),
                    audiences: Some(vec![TOKEN_AUDIENCE.to_string()]),
                },
                ..TokenReview::default()
            };
            let api: Api<TokenReview> = Api::all(self.client.clone());
            let answer = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| AuthnError::Unavailable(format!("TokenReview failed: {e}")))?;
            caller_of_review(&answer).map_err(AuthnError::Refused)
        })
    }
}

/// The caller a TokenReview's answer names, or why it names none.
pub fn caller_of_review(review: &TokenReview) -> Result<Caller, String> {
    let status = review
        .status
        .as_ref()
        .ok_or("the TokenReview has no status")?;
    if status.authenticated != Some(true) {
        return Err(match status.error.as_deref() {
            Some(e) if !e.is_empty() => format!("not authenticated: {e}"),
            _ => "not authenticated".into(),
        });
    }
    if let Some(audiences) = &status.audiences {
        if !audiences.iter().any(|a| a == TOKEN_AUDIENCE) {
            return Err(format!(
                "the token is for audiences {audiences:?}, not {TOKEN_AUDIENCE:?}"
            ));
        }
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .ok_or("the TokenReview names no user")?;
    service_account_of(username)
}

/// `system:serviceaccount:<namespace>:<name>` → the ServiceAccount.
pub fn service_account_of(username: &str) -> Result<Caller, String> {
    match username.split(':').collect::<Vec<_>>()[..] {
        ["system", "serviceaccount", ns, sa] if !ns.is_empty() && !sa.is_empty() => Ok(Caller {
            namespace: ns.to_string(),
            service_account: sa.to_string(),
        }),
        _ => Err(format!("{username:?} is not a ServiceAccount")),
    }
}

/// Local mode: `<dir>/<namespace>/<service-account>` holds that
/// workload's token. Read on every request, so files can be added live.
pub struct TokenFiles {
    dir: PathBuf,
}

impl TokenFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn find(&self, token: &str) -> Result<Caller, AuthnError> {
        let unreadable = |e: std::io::Error| {
            AuthnError::Unavailable(format!("bootstrap tokens in {}: {e}", self.dir.display()))
        };
        let mut found = None;
        for ns in std::fs::read_dir(&self.dir).map_err(unreadable)? {
            let ns = ns.map_err(unreadable)?;
            if !ns.file_type().map_err(unreadable)?.is_dir() {
                continue;
            }
            for sa in std::fs::read_dir(ns.path()).map_err(unreadable)? {
                let sa = sa.map_err(unreadable)?;
                let Ok(text) = std::fs::read_to_string(sa.path()) else {
                    continue;
                };
                // Every file is compared, in constant time, whatever matched.
                if same(text.trim().as_bytes(), token.as_bytes()) && !text.trim().is_empty() {
                    found = Some(Caller {
                        namespace: ns.file_name().to_string_lossy().into_owned(),
                        service_account: sa.file_name().to_string_lossy().into_owned(),
                    });
                }
            }
        }
        found.ok_or_else(|| {
            AuthnError::Refused(format!(
                "no bootstrap token file in {} holds this token",
                self.dir.display()
            ))
        })
    }
}

impl Authenticate for TokenFiles {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthnFuture<'a> {
        Box::pin(async move { self.find(token) })
    }
}

/// Equal bytes, compared in time that depends on the lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    fn review(authenticated: bool, user: &str, audiences: Option<&[&str]>) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: audiences.map(|a| a.iter().map(|s| s.to_string()).collect()),
                user: Some(UserInfo {
                    username: Some(user.into()),
                    ..UserInfo::default()
                }),
                error: (!authenticated).then(|| "token has expired".into()),
            }),
            ..TokenReview::default()
        }
    }

    #[test]
    fn a_review_names_the_service_account_or_says_why_not() {
        let ok = review(
            true,
            "system:serviceaccount:shop:buyer",
            Some(&["outrigger"]),
        );
        assert_eq!(
            caller_of_review(&ok).unwrap(),
            Caller {
                namespace: "shop".into(),
                service_account: "buyer".into()
            }
        );
        for (r, why) in [
            (
                review(false, "system:serviceaccount:shop:buyer", None),
                "not authenticated: token has expired",
            ),
            (
                review(true, "system:serviceaccount:shop:buyer", Some(&["api"])),
                "not \"outrigger\"",
            ),
            (
                review(true, "alice@example.com", Some(&["outrigger"])),
                "\"alice@example.com\" is not a ServiceAccount",
            ),
            (
                review(true, "system:serviceaccount:shop", None),
                "is not a ServiceAccount",
            ),
            (TokenReview::default(), "no status"),
        ] {
            let e = caller_of_review(&r).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[tokio::test]
    async fn token_files_name_their_workload() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("shop")).unwrap();
        std::fs::write(dir.path().join("shop/buyer"), "s3cret-buyer\n").unwrap();
        std::fs::write(dir.path().join("shop/web"), "s3cret-web").unwrap();
        std::fs::write(dir.path().join("shop/empty"), "\n").unwrap();
        let files = TokenFiles::new(dir.path());
        assert_eq!(
            files.authenticate("s3cret-buyer").await.unwrap(),
            Caller {
                namespace: "shop".into(),
                service_account: "buyer".into()
            }
        );
        assert_eq!(
            files
                .authenticate("s3cret-web")
                .await
                .unwrap()
                .service_account,
            "web"
        );
        for bad in ["s3cret", "", "s3cret-buyer2"] {
            let e = files.authenticate(bad).await.unwrap_err().to_string();
            assert!(
                e.starts_with("token refused: no bootstrap token file"),
                "{e}"
            );
        }
        let missing = TokenFiles::new(dir.path().join("nope"));
        assert!(matches!(
            missing.authenticate("x").await,
            Err(AuthnError::Unavailable(_))
        ));
    }
}
