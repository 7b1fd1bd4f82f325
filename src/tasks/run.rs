//! The work of each task type, on this node's files.
//!
//! Every path a task touches, after substitution, must lie inside the
//! folders the rule may touch ([`TaskEnv::folders`]): no `..`, and the
//! real (symlink-resolved) folder it lands in must be inside one of them.
//!
//! Built-in tasks are idempotent, because a node killed during a task runs
//! it again on restart: a `move` or `rename` whose source is gone and whose
//! target exists counts as done; `copy` writes a temporary file and renames
//! it into place; `delete` of a missing file is done; `link` to an existing
//! link of the same file is done; `chmod` and `checksum` give the same
//! result twice. `exec` runs again: a program given to a rule must tolerate
//! that (the docs say so).

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::{Task, Vars, When};
use crate::protocol::Digest;

/// Longest output of an `exec` kept for the job log, per stream.
pub const OUTPUT_KEPT: usize = 4096;

/// What a task acts on.
#[derive(Clone, Debug)]
pub struct TaskEnv {
    /// The request's file on this node, where it is now.
    pub file: PathBuf,
    /// The folders the rule may touch (resolved for this partner).
    pub folders: Vec<PathBuf>,
    pub vars: Vars,
    pub timeout: Duration,
    /// Unix milliseconds now (for `reschedule`).
    pub now_ms: u64,
    /// The name of this task's temporary file (`copy`, `checksum`), the
    /// same each time the task runs, so a run killed mid-write leaves
    /// nothing the next run does not overwrite and rename away.
    pub scratch: String,
}

/// What the runner must do after a task succeeded, besides moving on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// The file is now at this path.
    FileMoved(PathBuf),
    /// Submit a push of the file to `partner` under `rule`.
    Submit {
        partner: String,
        rule: Option<String>,
    },
    /// Run the request again at this time (unix ms), at most `limit` times.
    Reschedule {
        at: u64,
        limit: u32,
    },
}

/// A task that succeeded: what to do next, and a line for the job log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub effect: Effect,
    pub detail: String,
}

impl Outcome {
    fn done(detail: impl Into<String>) -> Outcome {
        Outcome { effect: Effect::None, detail: detail.into() }
    }
}

/// Runs `task`; `Err` says why it failed (a timeout included).
pub async fn run(task: &Task, env: &TaskEnv) -> Result<Outcome, String> {
    match task {
        Task::Exec { program, args } => exec(program, args, env).await,
        Task::Log { message } => Ok(Outcome::done(env.vars.substitute(message)?)),
        Task::Transfer { partner, rule } => Ok(Outcome {
            effect: Effect::Submit { partner: partner.clone(), rule: rule.clone() },
            detail: String::new(),
        }),
        Task::Reschedule { when, limit } => {
            let at = match when {
                When::After(d) => env.now_ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                When::DailyAt(minute) => next_time_of_day(env.now_ms, *minute),
            };
            Ok(Outcome { effect: Effect::Reschedule { at, limit: *limit }, detail: format!("due at {at} (unix ms)") })
        }
        _ => {
            let (task, env2) = (task.clone(), env.clone());
            let work = crate::determinism::blocking(move || file_task(&task, &env2));
            match tokio::time::timeout(env.timeout, work).await {
                Ok(Ok(result)) => result,
                Ok(Err(e)) => Err(format!("the task's thread failed: {e}")),
                Err(_) => Err(format!("ran past its timeout of {} ms", env.timeout.as_millis())),
            }
        }
    }
}

fn next_time_of_day(now_ms: u64, minute: u32) -> u64 {
    let day = 86_400_000;
    let today = now_ms - now_ms % day + u64::from(minute) * 60_000;
    if today > now_ms {
        today
    } else {
        today + day
    }
}

/// The tasks that act on files (run on a blocking thread).
fn file_task(task: &Task, env: &TaskEnv) -> Result<Outcome, String> {
    let file = &env.file;
    let target = |to: &str, keep_name: bool| -> Result<PathBuf, String> {
        let to = env.vars.substitute(to)?;
        let mut path = if Path::new(&to).is_absolute() {
            PathBuf::from(&to)
        } else {
            file.parent().unwrap_or(Path::new(".")).join(&to)
        };
        if keep_name && (to.ends_with('/') || path.is_dir()) {
            path = path.join(file.file_name().unwrap_or_default());
        }
        confine(&path, &env.folders)
    };
    match task {
        Task::Rename { to } => {
            let to = env.vars.substitute(to)?;
            if to.is_empty() || to.contains('/') || to == "." || to == ".." {
                return Err(format!("rename: {to:?} is not a file name"));
            }
            let dest = confine(&file.with_file_name(&to), &env.folders)?;
            move_file(file, &dest, &env.scratch)
        }
        Task::Move { to } => move_file(file, &target(to, true)?, &env.scratch),
        Task::Copy { to } => {
            let dest = target(to, true)?;
            copy_file(file, &dest, &env.scratch)?;
            Ok(Outcome::done(format!("copied to {}", dest.display())))
        }
        Task::Delete => match std::fs::remove_file(file) {
            Ok(()) => Ok(Outcome::done(format!("deleted {}", file.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Outcome::done(format!("{} was deleted already", file.display())))
            }
            Err(e) => Err(format!("cannot delete {}: {e}", file.display())),
        },
        Task::Link { to, symbolic } => {
            let dest = target(to, true)?;
            link_file(file, &dest, *symbolic)?;
            Ok(Outcome::done(format!("{} link {}", if *symbolic { "symbolic" } else { "hard" }, dest.display())))
        }
        Task::Chmod { mode } => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(*mode))
                .map_err(|e| format!("cannot chmod {}: {e}", file.display()))?;
            Ok(Outcome::done(format!("mode {mode:o}")))
        }
        Task::ChecksumWrite => {
            let digest = hash_file(file)?;
            let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let sidecar = confine(&file.with_file_name(format!("{name}.b3")), &env.folders)?;
            // The format `b3sum` writes and `b3sum --check` reads.
            write_atomically(&sidecar, format!("{digest}  {name}\n").as_bytes(), &env.scratch)?;
            Ok(Outcome::done(format!("BLAKE3 {digest} written to {}", sidecar.display())))
        }
        Task::ChecksumCheck { expect } => {
            let expect = env.vars.substitute(expect)?;
            let wanted = expect.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
            if wanted.len() != 64 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("the expected digest {expect:?} is not 64 hex digits"));
            }
            let digest = hash_file(file)?.to_string();
            if digest != wanted {
                return Err(format!("{} has BLAKE3 {digest}, expected {wanted}", file.display()));
            }
            Ok(Outcome::done(format!("BLAKE3 {digest} as expected")))
        }
        Task::Log { .. } | Task::Exec { .. } | Task::Transfer { .. } | Task::Reschedule { .. } => {
            Err("not a file task".into())
        }
    }
}

/// `path`, if it lies inside one of `folders`: lexically (no `..`), and
/// once its folder exists (created if missing, inside the root only), as
/// the real path of that folder.
pub fn confine(path: &Path, folders: &[PathBuf]) -> Result<PathBuf, String> {
    if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(format!("{} is not a plain absolute path", path.display()));
    }
    let outside = || {
        format!(
            "{} is outside the folders the rule may touch ({})",
            path.display(),
            folders.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    };
    let root = folders.iter().find(|d| path.starts_with(d)).ok_or_else(outside)?;
    let parent = path.parent().ok_or_else(outside)?;
    let real_root = root.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", root.display()))?;
    let through_a_link = || format!("{} leads outside {} through a symbolic link", path.display(), root.display());
    // Nothing is made before the part of the path that exists is known to
    // stay inside the root: a link on the way would have folders made
    // wherever it points.
    let mut existing = parent;
    while std::fs::symlink_metadata(existing).is_err() {
        existing = existing.parent().ok_or_else(outside)?;
    }
    let real_existing = existing.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", existing.display()))?;
    if !real_existing.starts_with(&real_root) {
        return Err(through_a_link());
    }
    std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let real_parent = parent.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", parent.display()))?;
    if !real_parent.starts_with(&real_root) {
        return Err(through_a_link());
    }
    Ok(path.to_path_buf())
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| format!("cannot fsync {}: {e}", dir.display()))
}

/// Moves (renames) `from` to `to`, across file systems by copy and remove.
/// Done already if `from` is gone and `to` exists.
fn move_file(from: &Path, to: &Path, scratch: &str) -> Result<Outcome, String> {
    let moved = Outcome { effect: Effect::FileMoved(to.to_path_buf()), detail: format!("now {}", to.display()) };
    if from == to {
        return Ok(moved);
    }
    if !from.exists() && to.exists() {
        return Ok(Outcome { detail: format!("{} (moved before)", moved.detail), ..moved });
    }
    match std::fs::rename(from, to) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_file(from, to, scratch)?;
            std::fs::remove_file(from).map_err(|e| format!("cannot remove {}: {e}", from.display()))?;
        }
        Err(e) => return Err(format!("cannot move {} to {}: {e}", from.display(), to.display())),
    }
    for dir in [to.parent(), from.parent()].into_iter().flatten() {
        sync_dir(dir)?;
    }
    Ok(moved)
}

/// Copies through a temporary file (`scratch`, in the target's folder)
/// renamed into place: a reader sees the old target or the whole copy, and
/// running it twice, or again after a kill, gives the same copy.
fn copy_file(from: &Path, to: &Path, scratch: &str) -> Result<(), String> {
    let mut src = std::fs::File::open(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    write_through(to, scratch, |out| std::io::copy(&mut src, out).map(|_| ()))
}

fn write_atomically(to: &Path, bytes: &[u8], scratch: &str) -> Result<(), String> {
    use std::io::Write;
    write_through(to, scratch, |out| out.write_all(bytes))
}

/// Writes `to` through `scratch` in its folder: write, fsync, rename,
/// fsync the folder.
fn write_through(
    to: &Path,
    scratch: &str,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), String> {
    let dir = to.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(scratch);
    let mut out = std::fs::File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    write(&mut out).and_then(|_| out.sync_all()).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, to).map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), to.display()))?;
    sync_dir(dir)
}

fn link_file(from: &Path, to: &Path, symbolic: bool) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(existing) = std::fs::symlink_metadata(to) {
        let same = if symbolic {
            std::fs::read_link(to).is_ok_and(|t| t == from)
        } else {
            std::fs::metadata(from).is_ok_and(|m| m.ino() == existing.ino() && m.dev() == existing.dev())
        };
        if same {
            return Ok(());
        }
        return Err(format!("{} exists and is not a link to {}", to.display(), from.display()));
    }
    let made = if symbolic { std::os::unix::fs::symlink(from, to) } else { std::fs::hard_link(from, to) };
    made.map_err(|e| format!("cannot link {} to {}: {e}", to.display(), from.display()))?;
    sync_dir(to.parent().unwrap_or(Path::new("/")))
}

fn hash_file(path: &Path) -> Result<Digest, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Digest(*h.finalize().as_bytes()))
}

/// Kills a process group when dropped, unless disarmed (`0 = None`).
struct GroupGuard(Option<i32>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: kill(2) with a negative pid signals the process group
            // the child leads (made by `process_group(0)`); no memory is
            // involved.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The first argument that starts with `-` only once its variables are
/// substituted (a file name such as `-rf`, or a sender's transfer info
/// `--config=...`), unless it follows a `--` the rule wrote: a program
/// would read it as an option. Arguments the rule itself starts with `-`
/// are its own options.
fn option_from_a_variable(templates: &[String], values: &[String]) -> Option<usize> {
    let end_of_options = templates.iter().position(|t| t == "--").unwrap_or(templates.len());
    (0..end_of_options.min(values.len())).find(|&i| values[i].starts_with('-') && !templates[i].starts_with('-'))
}

/// Runs a program without a shell: each argument substituted on its own,
/// the variables also in its environment (`FERRY_…`), its output kept up
/// to [`OUTPUT_KEPT`] bytes per stream, its process group killed at the
/// timeout. Exit status 0 is success.
async fn exec(program: &str, template_args: &[String], env: &TaskEnv) -> Result<Outcome, String> {
    use tokio::io::AsyncReadExt;
    let program = env.vars.substitute(program)?;
    let args = template_args.iter().map(|a| env.vars.substitute(a)).collect::<Result<Vec<_>, _>>()?;
    option_from_a_variable(template_args, &args).map_or(Ok(()), |i| {
        Err(format!(
            "argument {} of {program} would start with '-' only through its variables ({:?}), so the program could \
             take a file name or a partner's text as an option; write it as #FILEPATH# (a full path) or after \"--\"",
            i + 1,
            template_args[i]
        ))
    })?;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args)
        .envs(env.vars.env())
        .current_dir(env.file.parent().filter(|d| d.is_dir()).unwrap_or(Path::new("/")))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {program}: {e}"))?;
    // Until the program ended, its whole group dies with this future: at
    // the timeout, and when the task is abandoned (an operator's stop, the
    // node shutting down), so no grandchild outlives it.
    let mut group = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));
    let read_bounded = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| async move {
        let mut kept = Vec::new();
        let mut total = 0usize;
        if let Some(mut s) = stream {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n;
                let room = OUTPUT_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        (kept, total)
    };
    let out = child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let err = child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let run = async { tokio::join!(child.wait(), read_bounded(out), read_bounded(err)) };
    let (status, (out, out_total), (err, err_total)) = match tokio::time::timeout(env.timeout, run).await {
        Ok(r) => r,
        Err(_) => {
            group.kill();
            return Err(format!("{program} ran past its timeout of {} ms and was killed", env.timeout.as_millis()));
        }
    };
    group.0 = None;
    let status = status.map_err(|e| format!("cannot wait for {program}: {e}"))?;
    let show = |name: &str, kept: &[u8], total: usize| -> String {
        if total == 0 {
            return String::new();
        }
        let text = String::from_utf8_lossy(kept);
        let cut = if total > kept.len() { format!(" … ({total} bytes in all)") } else { String::new() };
        format!("; {name}: {}{cut}", text.trim_end())
    };
    let output = format!("{}{}", show("stdout", &out, out_total), show("stderr", &err, err_total));
    if status.success() {
        Ok(Outcome::done(format!("exited 0{output}")))
    } else {
        let how = match status.code() {
            Some(c) => format!("exited with status {c}"),
            None => "was killed by a signal".into(),
        };
        Err(format!("{program} {how}{output}"))
    }
}
