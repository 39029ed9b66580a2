//! The ZFS endpoint's command lines and parsers, on real outputs and tokens.

use super::*;

fn version(name: &str, guid: u64) -> FilesystemVersion {
    FilesystemVersion { name: name.into(), guid, ..Default::default() }
}

// A real token (from zrepl's tests): a full send of zroot/test/a@1, toguid 0x52f9c212c71e60cd.
const TOKEN: &str = "1-9baebea70-b8-789c636064000310a500c4ec50360710e72765a52697303030419460caa7a515a79680647ce0f26c48f2499525a9c5405ac3c90fabfe92fcf4d2cc140686b30972c7850efd0cd24092e704cbe725e6a632305415e5e797e803cd2ad14f743084b805001b201795";

#[test]
fn send_argument_vectors() {
    let endpoint = ZfsEndpoint::new("tank/src").expect("valid");
    let full = SendSpec { filesystem: "home".into(), to: version("s2", 2), ..Default::default() };
    assert_eq!(endpoint.send_command(&full).expect("ok").args(), ["send", "tank/src/home@s2"]);
    let incremental = SendSpec { from: Some(version("s1", 1)), raw: true, ..full.clone() };
    assert_eq!(
        endpoint.send_command(&incremental).expect("ok").args(),
        ["send", "-w", "-i", "@s1", "tank/src/home@s2"]
    );
}

#[test]
fn resume_tokens_are_checked_against_the_step() {
    let endpoint = ZfsEndpoint::new("zroot").expect("valid");
    let right = SendSpec {
        filesystem: "test/a".into(),
        to: version("1", 0x52f9_c212_c71e_60cd),
        resume_token: Some(TOKEN.into()),
        ..Default::default()
    };
    assert_eq!(endpoint.send_command(&right).expect("matches").args(), ["send", "-t", TOKEN]);
    let other = SendSpec { to: version("2", 0x1234), ..right.clone() };
    let err = endpoint.send_command(&other).expect_err("another snapshot").to_string();
    assert!(err.contains("zroot/test/a@1") && err.contains("zfs receive -A"), "{err}");
    let incremental = SendSpec { from: Some(version("0", 7)), ..right };
    assert!(endpoint.send_command(&incremental).is_err(), "the token is for a full send");
}

#[test]
fn receive_argument_vectors() {
    let endpoint = ZfsEndpoint::new("pool/dst").expect("valid");
    let full = ReceiveSpec { filesystem: "home".into(), to: version("s1", 1), ..Default::default() };
    assert_eq!(endpoint.receive_command(&full, false).args(), ["receive", "pool/dst/home"]);
    let incremental = ReceiveSpec { from: Some(version("s1", 1)), to: version("s2", 2), ..full };
    assert_eq!(endpoint.receive_command(&incremental, true).args(), ["receive", "-s", "-F", "pool/dst/home"]);
}

#[test]
fn dataset_roots_are_validated() {
    assert!(ZfsEndpoint::new("tank; reboot").is_err());
    assert!(ZfsEndpoint::new("-o/x").is_err());
}

#[test]
fn detects_resumable_receive_from_usage() {
    assert!(!usage_has_resume(
        "usage:\n\treceive [-vnF] <filesystem|volume|snapshot>\n\treceive [-vnF] -d <filesystem>"
    ));
    assert!(usage_has_resume("usage:\n\treceive [-FhMnsuv] [-o <property>=<value>] <filesystem|volume|snapshot>"));
}

#[test]
fn parses_zfs_get_output() {
    let text = "tank/home\tguid\t111\ntank/home\tcreatetxg\t1\n\
                tank/home@b\tguid\t13911458154226737419\ntank/home@b\tcreatetxg\t20\ntank/home@b\tcreation\t1763795000\n\
                tank/home@a\tguid\t42\ntank/home@a\tcreatetxg\t11\ntank/home@a\tcreation\t1763794000\n";
    let versions = parse_versions(text, "tank/home");
    assert_eq!(versions.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(versions[1].guid, 13_911_458_154_226_737_419);
    assert_eq!(versions[0].creation, "1763794000");
}

#[test]
fn parses_send_estimates() {
    assert_eq!(parse_estimate("full\ttank/home@a\t5389768\nsize\t5389768\n"), 5_389_768);
    assert_eq!(parse_estimate("garbage"), 0);
}
