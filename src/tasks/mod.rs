//! Tasks: what a rule does around a transfer, on each side.
//!
//! A rule lists, for its sender side and its receiver side, `pre_tasks`,
//! `post_tasks` and `error_tasks`. A task is a type, its arguments and an
//! optional timeout (`TaskConfig`, as written in the config). At start-up
//! each is checked and parsed into a [`Task`]: an unknown type, a missing
//! or stray argument, an unknown variable, or a fixed path outside the
//! rule's folders is refused with the rule, the list, the task and the
//! reason named.
//!
//! A task type is one variant of [`Task`] with its parsing (here) and its
//! work (`run.rs`); the runner that walks a list, persists the cursor and
//! writes the job log (`actors::task_runner`) does not change when a type
//! is added.
//!
//! Arguments may use variables (`vars.rs`), substituted once from the
//! request; a value is never parsed again, and an `exec` runs its program
//! without a shell, so a file name reaches a program as one argument.

pub mod run;
pub mod vars;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use vars::Vars;

/// Default timeout of a task that names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// A task as written in a rule.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// `log`, `rename`, `move`, `copy`, `delete`, `link`, `chmod`,
    /// `checksum`, `exec`, `transfer` or `reschedule`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `log`: the line to write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `rename`: the new name; `move`, `copy`, `link`: the new path (a
    /// folder that exists keeps the file's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `link`: a symbolic link instead of a hard one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbolic: Option<bool>,
    /// `chmod`: the mode, in octal (`"640"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `checksum`: `"write"` (a `b3sum` sidecar `FILE.b3`) or `"check"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `checksum` with `action = "check"`: the expected BLAKE3 (hex, or a
    /// `b3sum` line), usually a variable such as `#TRANSFERINFO#`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// `exec`: the program (an absolute path, or a name found on `PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// `exec`: its arguments, one string each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// `transfer`: the partner to send the file on to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner: Option<String>,
    /// `transfer`: the rule to send it under (default: this rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// `reschedule`: run the request again after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// `reschedule`: run it again at this time of day (UTC, `"HH:MM"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// `reschedule`: at most this many times (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Stops the task, and fails it, after this long (default 300 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The three task lists of one side of a rule.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SideTasks {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_tasks: Vec<TaskConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_tasks: Vec<TaskConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_tasks: Vec<TaskConfig>,
    /// Run once when a whole file set is delivered (every file `Done`),
    /// on the set's folder: `log` and `exec` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_tasks: Vec<TaskConfig>,
}

impl SideTasks {
    pub fn list(&self, list: TaskList) -> &[TaskConfig] {
        match list {
            TaskList::Pre => &self.pre_tasks,
            TaskList::Post => &self.post_tasks,
            TaskList::Error => &self.error_tasks,
            TaskList::Set => &self.set_tasks,
        }
    }

    /// Whether the side has no task at all.
    pub fn is_empty(&self) -> bool {
        self.has_no_file_tasks() && self.set_tasks.is_empty()
    }

    /// Whether the side has no per-file task (set tasks run once per set,
    /// not per file).
    pub fn has_no_file_tasks(&self) -> bool {
        self.pre_tasks.is_empty() && self.post_tasks.is_empty() && self.error_tasks.is_empty()
    }
}

/// Which of a side's lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskList {
    Pre,
    Post,
    Error,
    /// Once per file set, when every file of it is delivered.
    Set,
}

impl TaskList {
    pub const ALL: [TaskList; 4] = [TaskList::Pre, TaskList::Post, TaskList::Error, TaskList::Set];

    pub fn key(self) -> &'static str {
        match self {
            TaskList::Pre => "pre_tasks",
            TaskList::Post => "post_tasks",
            TaskList::Error => "error_tasks",
            TaskList::Set => "set_tasks",
        }
    }
}

/// A checked task, ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Task {
    Log { message: String },
    Rename { to: String },
    Move { to: String },
    Copy { to: String },
    Delete,
    Link { to: String, symbolic: bool },
    Chmod { mode: u32 },
    ChecksumWrite,
    ChecksumCheck { expect: String },
    Exec { program: String, args: Vec<String> },
    Transfer { partner: String, rule: Option<String> },
    Reschedule { when: When, limit: u32 },
}

impl Task {
    /// Whether the task acts on the request's file (reads, moves, changes
    /// or sends it on), as opposed to writing a line, running a program or
    /// scheduling the request.
    pub fn acts_on_the_file(&self) -> bool {
        !matches!(self, Task::Log { .. } | Task::Exec { .. } | Task::Reschedule { .. })
    }
}

/// When a rescheduled request runs again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    After(Duration),
    /// Minutes after midnight, UTC.
    DailyAt(u32),
}

impl TaskConfig {
    /// The task's type and arguments after substitution, for the job log.
    pub fn describe(&self, vars: &Vars) -> String {
        let mut parts = vec![self.kind.clone()];
        let show = |v: &str| vars.substitute(v).unwrap_or_else(|_| v.to_owned());
        for (key, value) in [
            ("message", &self.message),
            ("to", &self.to),
            ("mode", &self.mode),
            ("action", &self.action),
            ("expect", &self.expect),
            ("program", &self.program),
            ("partner", &self.partner),
            ("rule", &self.rule),
            ("at", &self.at),
        ] {
            if let Some(v) = value {
                parts.push(format!("{key}={:?}", show(v)));
            }
        }
        if let Some(args) = &self.args {
            let args: Vec<String> = args.iter().map(|a| show(a)).collect();
            parts.push(format!("args={args:?}"));
        }
        if self.symbolic == Some(true) {
            parts.push("symbolic".into());
        }
        if let Some(d) = self.delay_ms {
            parts.push(format!("delay_ms={d}"));
        }
        parts.join(" ")
    }

    pub fn timeout(&self) -> Duration {
        self.timeout_ms.map(Duration::from_millis).unwrap_or(DEFAULT_TIMEOUT)
    }

    /// Checks the task for `list` and parses it. `folders` are the folders
    /// the rule may touch (send, receive and its own `folders`), as written.
    pub fn parse(&self, list: TaskList, folders: &[PathBuf]) -> Result<Task, String> {
        let kind = self.kind.as_str();
        let allowed: &[&str] = match kind {
            "log" => &["message"],
            "rename" | "move" | "copy" => &["to"],
            "delete" => &[],
            "link" => &["to", "symbolic"],
            "chmod" => &["mode"],
            "checksum" => &["action", "expect"],
            "exec" => &["program", "args"],
            "transfer" => &["partner", "rule"],
            "reschedule" => &["delay_ms", "at", "limit"],
            other => {
                return Err(format!(
                    "unknown task type {other:?} (known: log, rename, move, copy, delete, link, chmod, checksum, \
                     exec, transfer, reschedule)"
                ))
            }
        };
        if list == TaskList::Set && !matches!(kind, "log" | "exec") {
            return Err(format!(
                "a {kind} task cannot run among set_tasks: they run once on the set's folder, not on one file \
                 (set_tasks may be log or exec)"
            ));
        }
        for (key, set) in self.given() {
            if set && !allowed.contains(&key) {
                return Err(format!("a {kind} task takes no {key:?} (it takes: {})", allowed.join(", ")));
            }
        }
        let error_vars = list == TaskList::Error;
        let text = |key: &str, v: &Option<String>| -> Result<String, String> {
            let v = v.clone().ok_or_else(|| format!("a {kind} task needs {key:?}"))?;
            Vars::check(&v, error_vars).map_err(|e| format!("{key}: {e}"))?;
            Ok(v)
        };
        let task = match kind {
            "log" => Task::Log { message: text("message", &self.message)? },
            "rename" => {
                let to = text("to", &self.to)?;
                if to.contains('/') {
                    return Err(format!("rename takes a new name, not a path ({to:?}); use move for another folder"));
                }
                Task::Rename { to }
            }
            "move" | "copy" | "link" => {
                let to = text("to", &self.to)?;
                check_fixed_path(&to, folders)?;
                match kind {
                    "move" => Task::Move { to },
                    "copy" => Task::Copy { to },
                    _ => Task::Link { to, symbolic: self.symbolic.unwrap_or(false) },
                }
            }
            "delete" => Task::Delete,
            "chmod" => {
                let mode = text("mode", &self.mode)?;
                let m = u32::from_str_radix(&mode, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| format!("mode {mode:?} is not an octal mode such as \"640\""))?;
                Task::Chmod { mode: m }
            }
            "checksum" => match self.action.as_deref() {
                Some("write") if self.expect.is_none() => Task::ChecksumWrite,
                Some("check") => Task::ChecksumCheck { expect: text("expect", &self.expect)? },
                Some("write") => return Err("checksum action \"write\" takes no \"expect\"".into()),
                Some(other) => return Err(format!("checksum action {other:?} is neither \"write\" nor \"check\"")),
                None => return Err("a checksum task needs \"action\": \"write\" or \"check\"".into()),
            },
            "exec" => {
                let program = text("program", &self.program)?;
                Vars::check_program(&program).map_err(|e| format!("program: {e}"))?;
                let args = self.args.clone().unwrap_or_default();
                for a in &args {
                    Vars::check(a, error_vars).map_err(|e| format!("args: {e}"))?;
                }
                Task::Exec { program, args }
            }
            "transfer" => {
                let partner = self.partner.clone().ok_or("a transfer task needs \"partner\"")?;
                Task::Transfer { partner, rule: self.rule.clone() }
            }
            "reschedule" => {
                if list != TaskList::Error {
                    return Err("reschedule runs only among error_tasks".into());
                }
                let when = match (self.delay_ms, &self.at) {
                    (Some(ms), None) => When::After(Duration::from_millis(ms)),
                    (None, Some(at)) => When::DailyAt(parse_time_of_day(at)?),
                    _ => return Err("a reschedule task needs either \"delay_ms\" or \"at\" (\"HH:MM\", UTC)".into()),
                };
                Task::Reschedule { when, limit: self.limit.unwrap_or(3) }
            }
            _ => unreachable!("every known type is matched above"),
        };
        if self.timeout_ms == Some(0) {
            return Err("timeout_ms must be at least 1".into());
        }
        Ok(task)
    }

    fn given(&self) -> [(&'static str, bool); 13] {
        [
            ("message", self.message.is_some()),
            ("to", self.to.is_some()),
            ("symbolic", self.symbolic.is_some()),
            ("mode", self.mode.is_some()),
            ("action", self.action.is_some()),
            ("expect", self.expect.is_some()),
            ("program", self.program.is_some()),
            ("args", self.args.is_some()),
            ("partner", self.partner.is_some()),
            ("rule", self.rule.is_some()),
            ("delay_ms", self.delay_ms.is_some()),
            ("at", self.at.is_some()),
            ("limit", self.limit.is_some()),
        ]
    }
}

fn parse_time_of_day(at: &str) -> Result<u32, String> {
    let bad = || format!("at {at:?} is not a time of day \"HH:MM\" (UTC)");
    let (h, m) = at.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// A target path with no variable in its folder part must lie inside one
/// of the rule's folders (checked at start-up; a path made by substitution
/// is checked again when the task runs).
fn check_fixed_path(to: &str, folders: &[PathBuf]) -> Result<(), String> {
    let path = Path::new(to);
    let Some(parent) = path.parent() else { return Ok(()) };
    if !path.is_absolute() || parent.to_string_lossy().contains('#') {
        return Ok(());
    }
    if parent.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!("{to:?} contains \"..\""));
    }
    let inside = |dir: &Path| {
        let t = dir.to_string_lossy();
        // A `#PARTNER#` folder: the fixed part before it must match.
        match t.find('#') {
            Some(i) => path.to_string_lossy().starts_with(&t[..i]),
            None => path.starts_with(dir),
        }
    };
    if folders.iter().any(|d| inside(d)) {
        return Ok(());
    }
    Err(format!(
        "{to:?} is outside the rule's folders ({}); add its folder to the rule's `folders`",
        folders.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    ))
}

#[cfg(test)]
mod tests;
