//! `ferry token`: make, list and revoke a node's API tokens (admin token needed).

use clap::{Args, Subcommand};
use ferry::model::{NewToken, TokenView};
use ferry::store::TokenRole;

use super::display::{iso_time, out, out_json, table};
use super::transfer::ApiArg;

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token and print it once (the node keeps only its hash).
    Create(CreateArgs),
    /// List the node's tokens: name, role, scope, made, revoked.
    List(ListArgs),
    /// Revoke a token by name: refused from the moment this returns.
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// The token's name (letters, digits, '.', '_', '-'), unique on the node.
    #[arg(long)]
    pub name: String,
    /// admin (everything), operator (submit, stop, cancel, restart, read),
    /// viewer (read only) or metrics (scrape /metrics only).
    #[arg(long, value_parser = parse_role)]
    pub role: TokenRole,
    /// Limit the token to these rules (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "RULES")]
    pub rules: Vec<String>,
    /// Limit the token to these partners or groups (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "PARTNERS")]
    pub partners: Vec<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// The token's name.
    pub name: String,
}

fn parse_role(s: &str) -> Result<TokenRole, String> {
    TokenRole::parse(s).ok_or_else(|| format!("{s:?} is not a role: admin, operator, viewer or metrics"))
}

pub async fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create(a) => {
            let made = a
                .api
                .client()?
                .create_token(&NewToken { name: a.name, role: a.role, rules: a.rules, partners: a.partners })
                .await?;
            if a.json {
                return out_json(&made);
            }
            out(&format!(
                "{}\ntoken {:?} ({}, {}): shown once; keep it in a file readable only by its user and pass it with --token-file or FERRY_TOKEN\n",
                made.token,
                made.view.name,
                made.view.role.name(),
                ferry::auth::scope_words(&made.view.rules, &made.view.partners)
            ))
        }
        TokenCommand::List(a) => {
            let tokens = a.api.client()?.tokens().await?;
            if a.json {
                return out_json(&tokens);
            }
            out(&list_text(&tokens))
        }
        TokenCommand::Revoke(a) => {
            let t = a.api.client()?.revoke_token(&a.name).await?;
            out(&format!("revoked token {:?} ({})\n", t.name, t.role.name()))
        }
    }
}

fn list_text(tokens: &[TokenView]) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.role.name().to_owned(),
                ferry::auth::scope_words(&t.rules, &t.partners),
                iso_time(t.created_at),
                t.revoked_at.map(iso_time).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(&["NAME", "ROLE", "SCOPE", "MADE", "REVOKED"], &rows)
}
