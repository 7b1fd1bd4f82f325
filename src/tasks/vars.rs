//! Variables in task arguments: `#NAME#`, substituted once from the request.
//!
//! Substitution is a single left-to-right pass: a value is copied into the
//! result as it is and never scanned again, so a file name that contains
//! `#RULE#`, quotes, `$(…)` or `;` stays those characters. A `#` that does
//! not start a known `#NAME#` stays a `#`.

use std::collections::BTreeMap;

/// Every variable, with what it holds.
pub const NAMES: [(&str, &str); 20] = [
    ("FILENAME", "the file's name as it is now on this node (after a rename, the new one)"),
    ("ORIGINALFILENAME", "the file name the request was submitted with"),
    ("FILEPATH", "the file's full path on this node"),
    ("FILESIZE", "the file's size in bytes"),
    ("RULE", "the rule's name"),
    ("REQUESTID", "the request id"),
    ("PARTNER", "the other node's id"),
    ("LOCALHOST", "this node's id"),
    ("REQUESTER", "the id of the node that requested the transfer"),
    ("REQUESTED", "the id of the node it was requested from"),
    ("DIRECTION", "push or pull"),
    ("EXTERNALJOBID", "the external job id given with the request (empty if none)"),
    ("TRANSFERINFO", "the transfer information given with the request"),
    ("DATE", "today, YYYYMMDD (UTC)"),
    ("HOUR", "now, HHMMSS (UTC)"),
    ("BLAKE3", "the file's verified BLAKE3, hex (empty before it is known)"),
    ("INPATH", "the rule's receive folder (for this partner)"),
    ("OUTPATH", "the rule's send folder"),
    ("ERRORCODE", "error tasks only: the code of the failure"),
    ("ERRORMSG", "error tasks only: the message of the failure"),
];

const ERROR_ONLY: [&str; 2] = ["ERRORCODE", "ERRORMSG"];

/// Variables whose value the partner chooses: the names and paths of the
/// files it sends (a delivered file's path is the file it sent), its free
/// text, and the message of a failure it reports.
const PARTNER_CHOSEN: [&str; 6] =
    ["FILENAME", "ORIGINALFILENAME", "FILEPATH", "EXTERNALJOBID", "TRANSFERINFO", "ERRORMSG"];

/// The values of the variables for one task run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vars {
    values: BTreeMap<&'static str, String>,
}

impl Vars {
    pub fn set(&mut self, name: &'static str, value: impl Into<String>) {
        debug_assert!(NAMES.iter().any(|(n, _)| *n == name), "unknown variable {name}");
        self.values.insert(name, value.into());
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Each variable as an environment variable for a program: `FERRY_NAME`.
    pub fn env(&self) -> impl Iterator<Item = (String, &str)> {
        self.values.iter().map(|(k, v)| (format!("FERRY_{k}"), v.as_str()))
    }

    /// Replaces every `#NAME#` of a known variable with its value. A known
    /// variable without a value here (an error variable outside error
    /// tasks) is an error.
    pub fn substitute(&self, template: &str) -> Result<String, String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find('#') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            match after.find('#').map(|end| &after[..end]).filter(|name| is_known(name)) {
                Some(name) => {
                    let value = self.values.get(name).ok_or_else(|| format!("#{name}# has no value here"))?;
                    out.push_str(value);
                    rest = &after[name.len() + 1..];
                }
                None => {
                    out.push('#');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Checks a template at start-up: every `#WORD#` that looks like a
    /// variable (capitals only) must be a known one, and the error
    /// variables appear only in error tasks.
    pub fn check(template: &str, error_task: bool) -> Result<(), String> {
        let mut rest = template;
        while let Some(start) = rest.find('#') {
            let after = &rest[start + 1..];
            let Some(end) = after.find('#') else { break };
            let word = &after[..end];
            if !word.is_empty() && word.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                if !is_known(word) {
                    return Err(format!(
                        "unknown variable #{word}# (known: {})",
                        NAMES.iter().map(|(n, _)| format!("#{n}#")).collect::<Vec<_>>().join(" ")
                    ));
                }
                if !error_task && ERROR_ONLY.contains(&word) {
                    return Err(format!("#{word}# has a value only in error_tasks"));
                }
                rest = &after[end + 1..];
            } else {
                rest = after;
            }
        }
        Ok(())
    }
}

impl Vars {
    /// Checks an `exec` task's program at start-up: the rule fixes which
    /// program runs, so no variable a partner chooses may name it (with
    /// `#FILEPATH#` a node would run the file a partner sent).
    pub fn check_program(template: &str) -> Result<(), String> {
        match PARTNER_CHOSEN.iter().find(|name| template.contains(&format!("#{name}#"))) {
            Some(name) => Err(format!(
                "#{name}# is chosen by the partner; the program a rule runs must not be (pass it as an argument)"
            )),
            None => Ok(()),
        }
    }
}

fn is_known(name: &str) -> bool {
    NAMES.iter().any(|(n, _)| *n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let mut v = Vars::default();
        v.set("FILENAME", "a b.csv");
        v.set("RULE", "payroll");
        v.set("DATE", "20261129");
        v
    }

    #[test]
    fn known_variables_are_replaced_and_other_hashes_kept() {
        let v = vars();
        assert_eq!(v.substitute("/arch/#DATE#/#FILENAME#").unwrap(), "/arch/20261129/a b.csv");
        assert_eq!(v.substitute("#1 #nope# ##RULE#").unwrap(), "#1 #nope# #payroll");
        assert_eq!(v.substitute("#RULE").unwrap(), "#RULE");
        assert!(v.substitute("#ERRORCODE#").unwrap_err().contains("no value"));
    }

    #[test]
    fn a_value_is_never_substituted_again() {
        let mut v = Vars::default();
        v.set("FILENAME", "#RULE#$(touch x);'\"\n");
        v.set("RULE", "r");
        assert_eq!(v.substitute("[#FILENAME#]").unwrap(), "[#RULE#$(touch x);'\"\n]");
    }

    #[test]
    fn the_check_names_unknown_and_misplaced_variables() {
        assert!(Vars::check("/x/#DATE#-#HOUR#/#FILENAME#", false).is_ok());
        assert!(Vars::check("#NOPE#", false).unwrap_err().contains("unknown variable #NOPE#"));
        assert!(Vars::check("#ERRORMSG#", false).unwrap_err().contains("only in error_tasks"));
        assert!(Vars::check("#ERRORMSG#", true).is_ok());
        assert!(Vars::check("price #1 and #lower#", false).is_ok());
    }

    #[test]
    fn every_variable_is_passed_to_programs_with_a_prefix() {
        let env: Vec<(String, String)> = vars().env().map(|(k, v)| (k, v.to_owned())).collect();
        assert!(env.contains(&("FERRY_FILENAME".into(), "a b.csv".into())), "{env:?}");
    }
}
