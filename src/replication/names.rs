//! Name validation. Filesystem and snapshot names come from the network and end up as arguments
//! of `btrfs`/`zfs` commands and as paths; they are checked here, before anything runs. Commands
//! are argument vectors (never a shell), so this is defence in depth against option injection
//! (`-o…`), path traversal (`..`, `/`) and names that ZFS or btrfs would refuse anyway.

use super::error::{ReplicationError, Result};

/// Longest name accepted (ZFS's limit is 255 bytes for a whole dataset path).
pub const MAX_NAME_LEN: usize = 255;

fn invalid(name: &str, reason: &'static str) -> ReplicationError {
    ReplicationError::InvalidName { name: name.to_string(), reason }
}

fn check_component(name: &str, whole: &str) -> Result<()> {
    if name.is_empty() {
        return Err(invalid(whole, "empty name component"));
    }
    if name == "." || name == ".." {
        return Err(invalid(whole, "`.` and `..` are not names"));
    }
    if name.starts_with('-') {
        return Err(invalid(whole, "a name may not start with `-` (it would read as an option)"));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))) {
        return Err(invalid(
            whole,
            if bad.is_whitespace() || bad.is_control() {
                "whitespace and control characters are not allowed"
            } else if "$`;|&<>(){}[]*?!~'\"\\#%^=,+".contains(bad) {
                "shell metacharacters are not allowed (only letters, digits, `_ - . :`)"
            } else {
                "only letters, digits, `_ - . :` are allowed"
            },
        ));
    }
    Ok(())
}

/// A filesystem name as it travels: one or more components joined by `/` (`data`, `tank/home`).
pub fn check_filesystem(name: &str) -> Result<()> {
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(name, "longer than 255 bytes"));
    }
    if name.starts_with('/') || name.ends_with('/') {
        return Err(invalid(name, "a filesystem name is relative: no leading or trailing `/`"));
    }
    name.split('/').try_for_each(|component| check_component(component, name))
}

/// A snapshot name (the part after `@`).
pub fn check_snapshot(name: &str) -> Result<()> {
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(name, "longer than 255 bytes"));
    }
    check_component(name, name)
}

/// A ZFS dataset path given by the operator (`pool/dst`): the same rules as a filesystem name.
pub fn check_dataset(name: &str) -> Result<()> {
    check_filesystem(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for name in ["data", "tank/home", "a_b-c.d:e", "x1/y2/z3"] {
            check_filesystem(name).expect(name);
        }
        for snap in ["2026-11-22", "zrepl_20261122_101500_000", "s1"] {
            check_snapshot(snap).expect(snap);
        }
    }

    #[test]
    fn bad_names_fail_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("data; rm -rf x", "shell metacharacters"),
            ("a b", "whitespace"),
            ("$(reboot)", "shell metacharacters"),
            ("a|b", "shell metacharacters"),
            ("../etc", "`.` and `..`"),
            ("/abs", "relative"),
            ("tank//x", "empty"),
            ("-o", "option"),
            ("a@b", "only letters"),
            ("naïve", "only letters"),
        ];
        for (name, why) in cases {
            let err = check_filesystem(name).expect_err(name).to_string();
            assert!(err.contains(why), "{name:?}: {err}");
        }
        assert!(check_snapshot("a/b").is_err());
        assert!(check_filesystem(&"x".repeat(300)).is_err());
    }
}
