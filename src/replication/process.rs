//! Child commands (`btrfs`, `zfs`): always an argument vector, never a shell; stderr is captured
//! (its tail goes into the error when the command fails); a child is killed and reaped when its
//! handle drops, so an aborted transfer leaves no `btrfs receive` running.

use std::fmt;
use std::io::Read;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;

use super::error::{ReplicationError, Result};

/// Bytes of a child's stderr kept for error messages.
const STDERR_TAIL: usize = 4096;

/// A command line: program and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    program: String,
    args: Vec<String>,
}

impl CommandLine {
    /// `program` with `args`.
    pub fn new<I, S>(program: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        CommandLine { program: program.to_string(), args: args.into_iter().map(Into::into).collect() }
    }

    /// The arguments (for tests of what would run).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        command
    }

    fn failure(&self, status: String, stderr_tail: String) -> ReplicationError {
        ReplicationError::Command { command: self.to_string(), status, stderr_tail }
    }

    fn not_started(&self, err: std::io::Error) -> ReplicationError {
        let hint = if err.kind() == std::io::ErrorKind::NotFound {
            format!("{err}: is `{}` installed and on PATH?", self.program)
        } else {
            err.to_string()
        };
        self.failure("could not start".into(), hint)
    }

    fn spawn(&self, mut command: Command) -> Result<Running> {
        let mut child = command.spawn().map_err(|err| self.not_started(err))?;
        let stderr = child.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut all = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    all.extend_from_slice(&buf[..n]);
                    if all.len() > 2 * STDERR_TAIL {
                        all.drain(..all.len() - STDERR_TAIL);
                    }
                }
                let start = all.len().saturating_sub(STDERR_TAIL);
                String::from_utf8_lossy(&all[start..]).into_owned()
            })
        });
        Ok(Running { child: Some(child), stderr, line: self.clone() })
    }

    /// Runs to completion and returns stdout; fails with the stderr tail on a non-zero exit.
    pub fn output(&self) -> Result<String> {
        tracing::debug!(command = %self, "running");
        let mut command = self.command();
        command.stdout(Stdio::piped());
        let output = command.output().map_err(|err| self.not_started(err))?;
        if !output.status.success() {
            let tail = &output.stderr[output.stderr.len().saturating_sub(STDERR_TAIL)..];
            return Err(self.failure(output.status.to_string(), String::from_utf8_lossy(tail).into_owned()));
        }
        String::from_utf8(output.stdout).map_err(|_| self.failure("printed non-UTF-8 output".into(), String::new()))
    }

    /// Starts the command with its stdout piped to us (a `send`).
    pub fn spawn_reader(&self) -> Result<(Running, ChildStdout)> {
        tracing::debug!(command = %self, "starting (stdout piped)");
        let mut command = self.command();
        command.stdout(Stdio::piped());
        let mut running = self.spawn(command)?;
        let stdout = running.child.as_mut().and_then(|child| child.stdout.take());
        let stdout = stdout.ok_or_else(|| self.failure("no stdout pipe".into(), String::new()))?;
        Ok((running, stdout))
    }

    /// Starts the command with its stdin piped from us (a `receive`).
    pub fn spawn_writer(&self) -> Result<(Running, ChildStdin)> {
        tracing::debug!(command = %self, "starting (stdin piped)");
        let mut command = self.command();
        command.stdin(Stdio::piped());
        let mut running = self.spawn(command)?;
        let stdin = running.child.as_mut().and_then(|child| child.stdin.take());
        let stdin = stdin.ok_or_else(|| self.failure("no stdin pipe".into(), String::new()))?;
        Ok((running, stdin))
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for arg in &self.args {
            if arg.chars().all(|c| c.is_ascii_alphanumeric() || "/@:._-=".contains(c)) && !arg.is_empty() {
                write!(f, " {arg}")?;
            } else {
                write!(f, " '{}'", arg.replace('\'', r"'\''"))?;
            }
        }
        Ok(())
    }
}

/// A running child. Dropping it kills and reaps the child.
#[derive(Debug)]
pub struct Running {
    child: Option<std::process::Child>,
    stderr: Option<JoinHandle<String>>,
    line: CommandLine,
}

impl Running {
    /// Waits for the child (its pipes must be closed by now) and fails with its stderr tail.
    pub fn wait(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let status = child.wait().map_err(|err| ReplicationError::io(format!("waiting for `{}`", self.line), err))?;
        let tail = self.stderr.take().and_then(|handle| handle.join().ok()).unwrap_or_default();
        if status.success() {
            if !tail.trim().is_empty() {
                tracing::debug!(command = %self.line, stderr = %tail.trim_end(), "finished");
            }
            Ok(())
        } else {
            Err(self.line.failure(status.to_string(), tail))
        }
    }

    /// Kills the child now (an aborted transfer) and reaps it.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            tracing::debug!(command = %self.line, "killed");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn failures_carry_the_stderr_tail_and_status() {
        let err =
            CommandLine::new("sh", ["-c", "echo first >&2; echo 'it broke' >&2; exit 3"]).output().expect_err("fails");
        let text = err.to_string();
        assert!(text.contains("exit status: 3") && text.contains("it broke"), "{text}");
        let err = CommandLine::new("no-such-program-rdma-rpc", ["x"]).output().expect_err("missing");
        assert!(err.to_string().contains("installed"), "{err}");
    }

    #[test]
    fn arguments_are_never_interpreted_by_a_shell() {
        let out = CommandLine::new("echo", ["$(id)", "a;b", "`x`"]).output().expect("runs");
        assert_eq!(out, "$(id) a;b `x`\n");
        assert_eq!(CommandLine::new("zfs", ["send", "a b", "it's"]).to_string(), r"zfs send 'a b' 'it'\''s'");
    }

    #[test]
    fn pipes_both_ways() {
        let (running, mut stdin) =
            CommandLine::new("sh", ["-c", "test \"$(cat)\" = hello"]).spawn_writer().expect("starts");
        stdin.write_all(b"hello").expect("writes");
        drop(stdin);
        running.wait().expect("child saw the bytes");
        let (running, mut stdout) = CommandLine::new("printf", ["abc"]).spawn_reader().expect("starts");
        let mut text = String::new();
        stdout.read_to_string(&mut text).expect("reads");
        running.wait().expect("exits 0");
        assert_eq!(text, "abc");
    }

    #[test]
    fn a_dropped_child_is_killed() {
        let (running, _stdout) = CommandLine::new("sleep", ["30"]).spawn_reader().expect("starts");
        let started = std::time::Instant::now();
        drop(running);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
