//! The API's shapes for tokens: what an admin asks for and is shown.

use serde::{Deserialize, Serialize};

use crate::store::{TokenRecord, TokenRole};

/// A token to make (`POST /api/v1/tokens`).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// 1 to 64 of `A-Z a-z 0-9 . _ -`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    pub role: TokenRole,
    /// Limit the token to these rules (empty: every rule).
    #[serde(default)]
    pub rules: Vec<String>,
    /// Limit the token to these partners or groups (empty: every partner).
    #[serde(default)]
    pub partners: Vec<String>,
}

/// A token as the API shows it: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    pub name: String,
    pub role: TokenRole,
    pub rules: Vec<String>,
    pub partners: Vec<String>,
    /// Unix milliseconds.
    pub created_at: u64,
    /// Unix milliseconds; absent while the token is valid.
    pub revoked_at: Option<u64>,
}

impl From<&TokenRecord> for TokenView {
    fn from(t: &TokenRecord) -> Self {
        TokenView {
            name: t.name.clone(),
            role: t.role,
            rules: t.rules.clone(),
            partners: t.partners.clone(),
            created_at: t.created_at,
            revoked_at: t.revoked_at,
        }
    }
}

/// The answer to `POST /api/v1/tokens`: the only time the token is shown.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub view: TokenView,
    /// The bearer token; it is not kept by the node and cannot be shown again.
    pub token: String,
}
