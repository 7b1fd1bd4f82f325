//! What the store keeps for each API token: never the secret, only its hash.

use serde::{Deserialize, Serialize};

/// What a token may do (see [`crate::auth`] for the table of rights).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    /// Everything, tokens included.
    Admin,
    /// Submit, stop, cancel, restart, and read.
    Operator,
    /// Read only.
    Viewer,
    /// Scrape `/metrics` only.
    Metrics,
}

impl TokenRole {
    pub const ALL: [TokenRole; 4] = [TokenRole::Admin, TokenRole::Operator, TokenRole::Viewer, TokenRole::Metrics];

    /// The lowercase name used by the API and the command line.
    pub fn name(self) -> &'static str {
        match self {
            TokenRole::Admin => "admin",
            TokenRole::Operator => "operator",
            TokenRole::Viewer => "viewer",
            TokenRole::Metrics => "metrics",
        }
    }

    pub fn parse(s: &str) -> Option<TokenRole> {
        TokenRole::ALL.into_iter().find(|r| r.name().eq_ignore_ascii_case(s.trim()))
    }
}

/// One API token as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Unique on this node; what `ferry token revoke` names.
    pub name: String,
    pub role: TokenRole,
    /// Rules this token is limited to; empty means every rule.
    pub rules: Vec<String>,
    /// Partners (ids or groups) this token is limited to; empty means every partner.
    pub partners: Vec<String>,
    /// The public part of the token, used to find its record.
    pub key_id: String,
    /// BLAKE3 of the secret part.
    pub hash: [u8; 32],
    pub created_at: u64,
    /// When it was revoked; a revoked token is refused, and kept so the
    /// refusal can say so.
    pub revoked_at: Option<u64>,
}
