//! Who may use the REST API, and for what: bearer tokens, roles and scopes.
//!
//! Decisions here are pure ([`Caller::require`], [`Caller::covers`]); the
//! tokens themselves live in the store (hash only) and are looked up by
//! [`TokenBook`].
//!
//! | role       | read (transfers, logs, partners, rules, node, events) | submit, stop, cancel, restart | tokens | `/metrics` |
//! |------------|-----|-----|-----|-----|
//! | `admin`    | yes | yes | yes | yes |
//! | `operator` | yes | yes | no  | no  |
//! | `viewer`   | yes | no  | no  | no  |
//! | `metrics`  | no  | no  | no  | yes |
//!
//! A scope (a list of rules and/or a list of partners) narrows a token
//! further: it sees and acts on only the transfers whose rule and partner
//! are in its lists, sees only those rules and partners, and may not use
//! the cluster-wide routes (`source`/`target` submissions, the cluster view)
//! unless every node they name is in its partners.
//!
//! A token is `ferry_<key id>_<secret>`: the key id (12 hex) finds the
//! record, the secret (64 hex, 256 bits from the OS) is checked against its
//! BLAKE3 hash in constant time. The secret is shown once, when the token is
//! made, and never logged.

mod book;

pub use book::{read_token_file, TokenBook, TokenError, ADMIN_TOKEN_FILE};

use std::sync::Arc;

use crate::store::{TokenRecord, TokenRole};

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    /// Read transfers, logs, partners, rules, the node, events.
    Read,
    /// Submit, stop, cancel, restart.
    Operate,
    /// Create, list and revoke tokens.
    ManageTokens,
    /// Scrape `/metrics`.
    Scrape,
}

impl Right {
    fn name(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Operate => "submit and control transfers",
            Right::ManageTokens => "manage tokens",
            Right::Scrape => "scrape metrics",
        }
    }
}

/// Whether `role` carries `right`.
pub fn role_has(role: TokenRole, right: Right) -> bool {
    match role {
        TokenRole::Admin => true,
        TokenRole::Operator => matches!(right, Right::Read | Right::Operate),
        TokenRole::Viewer => right == Right::Read,
        TokenRole::Metrics => right == Right::Scrape,
    }
}

/// Why a caller with a valid token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    #[error("token {name:?} (role {role}) may not {right}")]
    Role { name: String, role: &'static str, right: &'static str },
    #[error("token {name:?} is limited to {scope}; {what} is outside it")]
    Scope { name: String, scope: String, what: String },
}

/// The authenticated caller of one API request.
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<TokenRecord>);

impl Caller {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn role(&self) -> TokenRole {
        self.0.role
    }

    /// Whether the token has a scope at all.
    pub fn is_scoped(&self) -> bool {
        !self.0.rules.is_empty() || !self.0.partners.is_empty()
    }

    /// Refuses unless the token's role carries `right`.
    pub fn require(&self, right: Right) -> Result<(), Denied> {
        if role_has(self.0.role, right) {
            return Ok(());
        }
        Err(Denied::Role { name: self.0.name.clone(), role: self.0.role.name(), right: right.name() })
    }

    /// Whether the scope covers a rule (any rule when the token names none).
    pub fn covers_rule(&self, rule: &str) -> bool {
        self.0.rules.is_empty() || self.0.rules.iter().any(|r| r == rule)
    }

    /// Whether the scope covers a partner named by any of `names` (its id,
    /// an alias, a group it was picked from).
    pub fn covers_partner<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> bool {
        if self.0.partners.is_empty() {
            return true;
        }
        names.into_iter().any(|n| self.0.partners.iter().any(|p| p == n))
    }

    /// Whether the scope covers a transfer on `rule` with a partner named by `names`.
    pub fn covers<'a>(&self, rule: &str, names: impl IntoIterator<Item = &'a str>) -> bool {
        self.covers_rule(rule) && self.covers_partner(names)
    }

    /// Refuses unless the role carries `right` and the scope covers the transfer.
    pub fn require_on<'a>(
        &self,
        right: Right,
        rule: &str,
        names: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Result<(), Denied> {
        self.require(right)?;
        if !self.covers_rule(rule) {
            return Err(self.out_of_scope(format!("rule {rule:?}")));
        }
        if !self.covers_partner(names.clone()) {
            let names: Vec<&str> = names.into_iter().collect();
            return Err(self.out_of_scope(format!("partner {:?}", names.first().copied().unwrap_or(""))));
        }
        Ok(())
    }

    /// Refuses a scoped token: for the routes that reach beyond one
    /// transfer's rule and partner.
    pub fn require_unscoped(&self, what: &str) -> Result<(), Denied> {
        match self.is_scoped() {
            false => Ok(()),
            true => Err(self.out_of_scope(what.to_owned())),
        }
    }

    fn out_of_scope(&self, what: String) -> Denied {
        Denied::Scope { name: self.0.name.clone(), scope: scope_text(&self.0), what }
    }
}

/// "rules a, b and partners c" — a scope in words ("every rule and
/// partner" without one); the API's refusals and `ferry token list` say it
/// the same way.
pub fn scope_words(rules: &[String], partners: &[String]) -> String {
    let mut parts = Vec::new();
    if !rules.is_empty() {
        parts.push(format!("rules {}", rules.join(", ")));
    }
    if !partners.is_empty() {
        parts.push(format!("partners {}", partners.join(", ")));
    }
    match parts.is_empty() {
        true => "every rule and partner".to_owned(),
        false => parts.join(" and "),
    }
}

/// A token's scope in words (see [`scope_words`]).
pub fn scope_text(t: &TokenRecord) -> String {
    scope_words(&t.rules, &t.partners)
}

#[cfg(test)]
mod tests;
