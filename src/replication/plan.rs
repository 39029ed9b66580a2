//! Planning, zrepl style: from the versions on both sides, find the newest common snapshot (by
//! GUID), then send the newer source snapshots in order, each incremental from the one before; a
//! filesystem the target lacks starts with a full stream of the oldest source snapshot. A resume
//! token the target reported attaches to the step it belongs to (by GUID), so an interrupted
//! transfer continues instead of starting over.

use super::error::{ReplicationError, Result};
use super::resume::{ByteToken, ZfsToken};
use crate::pb::replication::FilesystemVersion;

/// One stream to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Filesystem name.
    pub filesystem: String,
    /// Incremental base, `None` for a full stream.
    pub from: Option<FilesystemVersion>,
    /// Snapshot to send.
    pub to: FilesystemVersion,
    /// The target's resume token for exactly this step.
    pub resume_token: Option<String>,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.from {
            Some(from) => write!(f, "{}@{} -> @{} (incremental)", self.filesystem, from.name, self.to.name)?,
            None => write!(f, "{}@{} (full)", self.filesystem, self.to.name)?,
        }
        Ok(())
    }
}

/// The GUIDs (to, from) a token names, if it can be read.
fn token_guids(token: &str) -> Option<(u64, u64)> {
    match ByteToken::parse(token) {
        Some(Ok(token)) => Some((token.to_guid, token.from_guid)),
        Some(Err(_)) => None,
        None => ZfsToken::parse(token).ok().map(|token| (token.to_guid, token.from_guid)),
    }
}

/// The steps that bring `target` up to `source` for one filesystem.
pub fn plan_filesystem(
    filesystem: &str,
    source: &[FilesystemVersion],
    target: &[FilesystemVersion],
    target_token: Option<&str>,
) -> Result<Vec<Step>> {
    let common = source.iter().rposition(|version| target.iter().any(|t| t.guid == version.guid));
    let mut steps = Vec::new();
    let start = match common {
        Some(index) => {
            let common_guid = source[index].guid;
            let newer: Vec<&str> = target
                .iter()
                .skip_while(|t| t.guid != common_guid)
                .skip(1)
                .filter(|t| !source.iter().any(|s| s.guid == t.guid))
                .map(|t| t.name.as_str())
                .collect();
            if !newer.is_empty() {
                return Err(ReplicationError::Conflict(format!(
                    "{filesystem}: the target has snapshots newer than the common @{} that the source does not have \
                     ({}); destroy them on the target to replicate",
                    source[index].name,
                    newer.join(", ")
                )));
            }
            index + 1
        }
        None if target.is_empty() => {
            let Some(first) = source.first() else { return Ok(steps) };
            steps.push(Step { filesystem: filesystem.into(), from: None, to: first.clone(), resume_token: None });
            1
        }
        None => {
            return Err(ReplicationError::Conflict(format!(
                "{filesystem}: no common snapshot between source and target (target has {}); replicate into an empty \
                 target, or destroy the target's snapshots",
                target.iter().map(|t| format!("@{}", t.name)).collect::<Vec<_>>().join(", ")
            )));
        }
    };
    for pair in source[start.saturating_sub(1)..].windows(2) {
        if start == 0 {
            break;
        }
        steps.push(Step {
            filesystem: filesystem.into(),
            from: Some(pair[0].clone()),
            to: pair[1].clone(),
            resume_token: None,
        });
    }
    if let (Some(token), Some(first)) = (target_token.filter(|t| !t.is_empty()), steps.first_mut())
        && let Some((to_guid, from_guid)) = token_guids(token)
        && to_guid == first.to.guid
        && from_guid == first.from.as_ref().map_or(0, |v| v.guid)
    {
        first.resume_token = Some(token.to_string());
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(name: &str, guid: u64) -> FilesystemVersion {
        FilesystemVersion { name: name.into(), guid, create_txg: guid, ..Default::default() }
    }

    fn names(steps: &[Step]) -> Vec<String> {
        steps.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn empty_target_gets_full_then_incrementals() {
        let source = [v("a", 1), v("b", 2), v("c", 3)];
        let steps = plan_filesystem("fs", &source, &[], None).expect("plan");
        assert_eq!(names(&steps), ["fs@a (full)", "fs@a -> @b (incremental)", "fs@b -> @c (incremental)"]);
    }

    #[test]
    fn continues_from_the_newest_common_snapshot() {
        let source = [v("a", 1), v("b", 2), v("c", 3), v("d", 4)];
        let target = [v("a", 1), v("b", 2)];
        let steps = plan_filesystem("fs", &source, &target, None).expect("plan");
        assert_eq!(names(&steps), ["fs@b -> @c (incremental)", "fs@c -> @d (incremental)"]);
        assert!(plan_filesystem("fs", &source, &source, None).expect("plan").is_empty(), "up to date");
    }

    #[test]
    fn divergence_and_strangers_are_conflicts() {
        let source = [v("a", 1), v("b", 2)];
        let err = plan_filesystem("fs", &source, &[v("a", 1), v("x", 9)], None).expect_err("diverged");
        assert!(err.to_string().contains("newer than the common @a"), "{err}");
        let err = plan_filesystem("fs", &source, &[v("z", 7)], None).expect_err("no common");
        assert!(err.to_string().contains("no common snapshot"), "{err}");
    }

    #[test]
    fn a_matching_token_resumes_the_first_step_only() {
        let source = [v("a", 1), v("b", 2)];
        let token = ByteToken { to_guid: 1, from_guid: 0, offset: 100, prefix_crc: 5 }.encode();
        let steps = plan_filesystem("fs", &source, &[], Some(&token)).expect("plan");
        assert_eq!(steps[0].resume_token.as_deref(), Some(token.as_str()));
        assert_eq!(steps[1].resume_token, None);
        let other = ByteToken { to_guid: 2, from_guid: 0, offset: 100, prefix_crc: 5 }.encode();
        let steps = plan_filesystem("fs", &source, &[], Some(&other)).expect("plan");
        assert!(steps.iter().all(|s| s.resume_token.is_none()), "a token for another step is not used");
    }
}
