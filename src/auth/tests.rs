use super::*;

fn caller(role: TokenRole, rules: &[&str], partners: &[&str]) -> Caller {
    Caller(Arc::new(TokenRecord {
        name: "t".into(),
        role,
        rules: rules.iter().map(|s| s.to_string()).collect(),
        partners: partners.iter().map(|s| s.to_string()).collect(),
        key_id: "k".into(),
        hash: [0; 32],
        created_at: 0,
        revoked_at: None,
    }))
}

#[test]
fn each_role_has_exactly_its_rights() {
    use Right::*;
    let table = [
        (TokenRole::Admin, [true, true, true, true]),
        (TokenRole::Operator, [true, true, false, false]),
        (TokenRole::Viewer, [true, false, false, false]),
        (TokenRole::Metrics, [false, false, false, true]),
    ];
    for (role, rights) in table {
        for (right, want) in [Read, Operate, ManageTokens, Scrape].into_iter().zip(rights) {
            assert_eq!(role_has(role, right), want, "{role:?} {right:?}");
            assert_eq!(caller(role, &[], &[]).require(right).is_ok(), want, "{role:?} {right:?}");
        }
    }
}

#[test]
fn a_scope_limits_rules_and_partners() {
    let c = caller(TokenRole::Operator, &["payroll"], &[]);
    assert!(c.require_on(Right::Operate, "payroll", ["b"]).is_ok());
    let e = c.require_on(Right::Operate, "default", ["b"]).expect_err("other rule");
    assert!(e.to_string().contains("rule \"default\" is outside"), "{e}");
    let c = caller(TokenRole::Viewer, &[], &["b", "backends"]);
    assert!(c.covers("any", ["c", "backends"]), "picked from a group in scope");
    assert!(c.covers("any", ["b"]));
    assert!(!c.covers("any", ["c"]));
    let e = c.require_on(Right::Read, "x", ["c"]).expect_err("other partner");
    assert!(e.to_string().contains("partner \"c\""), "{e}");
    assert!(c.require_on(Right::Operate, "x", ["b"]).is_err(), "a viewer's scope adds no right");
}

#[test]
fn only_unscoped_tokens_reach_beyond_one_transfer() {
    assert!(caller(TokenRole::Admin, &[], &[]).require_unscoped("the cluster view").is_ok());
    let e = caller(TokenRole::Admin, &["r"], &[]).require_unscoped("the cluster view").expect_err("scoped");
    assert!(e.to_string().contains("the cluster view is outside"), "{e}");
}

#[test]
fn scope_text_reads_as_words() {
    assert_eq!(scope_text(&caller(TokenRole::Viewer, &[], &[]).0), "every rule and partner");
    assert_eq!(scope_text(&caller(TokenRole::Viewer, &["a", "b"], &["c"]).0), "rules a, b and partners c");
}
