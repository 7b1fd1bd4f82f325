//! `ferry rules`: what each rule of a node does — who may use it, its
//! folders, its target mode and its tasks, in the order they run.

use clap::Args;
use ferry::model::RuleView;
use ferry::tasks::{SideTasks, TaskList, Vars};

use super::display::{out, out_json};
use super::transfer::ApiArg;

/// Arguments of `rules`.
#[derive(Args, Debug, Clone)]
pub struct RulesArgs {
    #[command(flatten)]
    pub api: ApiArg,
    /// Print the API's JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `rules`: every rule of the node.
pub async fn rules(args: RulesArgs) -> anyhow::Result<()> {
    let rules = args.api.client()?.rules().await?;
    if args.json {
        return out_json(&rules);
    }
    out(&rules_text(&rules))
}

fn side_text(name: &str, side: &SideTasks, text: &mut String) {
    for list in TaskList::ALL {
        let tasks = side.list(list);
        if tasks.is_empty() {
            continue;
        }
        text.push_str(&format!("  {name} {}:\n", list.key().replace('_', "-")));
        for (i, t) in tasks.iter().enumerate() {
            // Shown as written: variables are filled in when a task runs.
            let timeout = t.timeout_ms.map(|ms| format!(" (timeout {ms} ms)")).unwrap_or_default();
            text.push_str(&format!("    {}. {}{timeout}\n", i + 1, t.describe(&Vars::default())));
        }
    }
}

pub fn rules_text(rules: &[RuleView]) -> String {
    let mut text = String::new();
    for r in rules {
        text.push_str(&format!("rule {}: for {}\n", r.name, r.partners.join(", ")));
        text.push_str(&format!("  sends from     {}\n", r.send_dir));
        text.push_str(&format!("  receives into  {}\n", r.recv_dir));
        let target = format!("{:?}", r.target).to_lowercase();
        let backup =
            if target == "backup" { format!(" (existing file renamed to {})", r.backup_name) } else { String::new() };
        text.push_str(&format!("  target mode    {target}{backup}\n"));
        let policy = |v: &dyn std::fmt::Debug| format!("{v:?}").to_lowercase();
        text.push_str(&format!(
            "  file sets      on_empty = {}, on_failure = {}, delivery = {}\n",
            policy(&r.on_empty),
            policy(&r.on_failure),
            policy(&r.delivery)
        ));
        if !r.folders.is_empty() {
            text.push_str(&format!("  task folders   {}\n", r.folders.join(", ")));
        }
        if r.sender.is_empty() && r.receiver.is_empty() {
            text.push_str("  no tasks\n");
        }
        side_text("sender", &r.sender, &mut text);
        side_text("receiver", &r.receiver, &mut text);
    }
    if rules.is_empty() {
        text.push_str("no rules: this node can neither send nor receive\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry::config::Rule;
    use ferry::tasks::TaskConfig;

    #[test]
    fn a_rule_reads_in_the_order_its_tasks_run() {
        let mut rule = Rule::new("payroll", "/srv/out".into(), "/srv/in/#PARTNER#".into(), vec!["bank".into()]);
        rule.receiver.post_tasks = vec![
            TaskConfig { kind: "move".into(), to: Some("/srv/archive/#DATE#/".into()), ..Default::default() },
            TaskConfig {
                kind: "exec".into(),
                program: Some("/usr/local/bin/load".into()),
                args: Some(vec!["#FILEPATH#".into()]),
                timeout_ms: Some(60_000),
                ..Default::default()
            },
        ];
        let text = rules_text(&[RuleView::from_rule(&rule)]);
        assert!(text.starts_with("rule payroll: for bank\n"), "{text}");
        assert!(text.contains("  receiver post-tasks:\n    1. move to=\"/srv/archive/#DATE#/\"\n"), "{text}");
        assert!(
            text.contains("    2. exec program=\"/usr/local/bin/load\" args=[\"#FILEPATH#\"] (timeout 60000 ms)\n"),
            "{text}"
        );
        assert!(text.contains("target mode    replace"), "{text}");
        assert!(text.contains("file sets      on_empty = fail, on_failure = stop, delivery = each\n"), "{text}");
    }
}
