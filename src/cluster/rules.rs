//! The cluster's pure rules: which group member takes a request, and who
//! handed a request over. No I/O; the actors carry them out.

use crate::model::PartnerState;

/// Chooses a group member for a request: an available one first, then one
/// not known to be unavailable, in the group's order; `avoid` (the member
/// that just failed) is taken only if nothing else is left. `state_of`
/// says what this node knows of a member.
pub fn pick_member(members: &[String], state_of: impl Fn(&str) -> PartnerState, avoid: Option<&str>) -> String {
    let rank = |m: &String| {
        let base = match state_of(m) {
            PartnerState::Available => 0,
            PartnerState::Unknown => 1,
            PartnerState::Unavailable => 2,
        };
        base + if Some(m.as_str()) == avoid { 3 } else { 0 }
    };
    members.iter().min_by_key(|m| rank(m)).cloned().unwrap_or_default()
}

/// The `submitted_on` a node records for a request `from` handed over:
/// the node whose API took it (`submitted_on` as `from` gave it), and
/// `from` if that is another node ("c (via b)").
pub fn handed_over_via(submitted_on: &str, from: &str) -> String {
    if submitted_on == from {
        submitted_on.to_owned()
    } else {
        format!("{submitted_on} (via {from})")
    }
}

/// The partner that handed a request over, from the record's
/// `submitted_on` ("c", or "c (via b)" when b passed on what c took).
pub fn handed_over_by(submitted_on: &str) -> &str {
    match submitted_on.rsplit_once(" (via ") {
        Some((_, via)) => via.strip_suffix(')').unwrap_or(via),
        None => submitted_on,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Vec<String> {
        vec!["b".into(), "c".into(), "d".into()]
    }

    #[test]
    fn an_available_member_wins_then_an_unknown_one_in_group_order() {
        let state = |m: &str| match m {
            "b" => PartnerState::Unavailable,
            "c" => PartnerState::Unknown,
            _ => PartnerState::Available,
        };
        assert_eq!(pick_member(&members(), state, None), "d");
        let none_available = |m: &str| if m == "b" { PartnerState::Unavailable } else { PartnerState::Unknown };
        assert_eq!(pick_member(&members(), none_available, None), "c");
    }

    #[test]
    fn the_member_that_failed_is_taken_only_when_nothing_else_is_left() {
        let all_up = |_: &str| PartnerState::Available;
        assert_eq!(pick_member(&members(), all_up, Some("b")), "c");
        let others_down = |m: &str| if m == "b" { PartnerState::Available } else { PartnerState::Unavailable };
        assert_eq!(pick_member(&members(), others_down, Some("b")), "c", "an unavailable member beats avoid");
        assert_eq!(pick_member(&["b".into()], all_up, Some("b")), "b");
        assert_eq!(pick_member(&[], all_up, None), "");
    }

    #[test]
    fn a_handover_names_the_api_node_and_the_node_that_passed_it_on() {
        assert_eq!(handed_over_via("c", "c"), "c");
        assert_eq!(handed_over_via("c", "b"), "c (via b)");
        assert_eq!(handed_over_by("c"), "c");
        assert_eq!(handed_over_by(&handed_over_via("c", "b")), "b");
    }
}
