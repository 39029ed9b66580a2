//! The `dir:` store: resume tokens of partial streams, resumes that check the prefix, stale
//! records, and bit rot caught when a stored stream is sent on.

use std::io::Read;

use super::*;
use crate::replication::endpoint::{Endpoint, ReceiveSpec, SendSpec};

fn version(name: &str, guid: u64) -> FilesystemVersion {
    FilesystemVersion { name: name.into(), guid, create_txg: guid, ..Default::default() }
}

fn store(dir: &Path) -> Endpoint {
    Endpoint::parse(&format!("dir:{}", dir.display())).expect("store")
}

fn spec(resume_offset: u64, prefix_crc: Option<u32>) -> ReceiveSpec {
    ReceiveSpec { filesystem: "fs".into(), to: version("s1", 7), resume_offset, prefix_crc, ..Default::default() }
}

#[test]
fn an_interrupted_receive_resumes_where_the_verified_prefix_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut sink = store.receive(&spec(0, None)).expect("receive");
    sink.write(&data[..100_000]).expect("write");
    drop(sink); // interrupted

    let fs = store.filesystems().expect("list");
    let token = ByteToken::parse(&fs[0].resume_token).expect("ours").expect("valid");
    assert_eq!((token.to_guid, token.offset), (7, 100_000));
    assert_eq!(token.prefix_crc, crc32c::crc32c(&data[..100_000]));
    assert!(store.versions("fs").expect("versions").is_empty(), "a partial stream is no version");

    let wrong = store.receive(&spec(100_000, Some(token.prefix_crc ^ 1))).err().expect("prefix differs");
    assert!(wrong.is_retryable(), "{wrong}");
    let mut sink = store.receive(&spec(100_000, Some(token.prefix_crc))).expect("resume");
    sink.write(&data[100_000..]).expect("write");
    sink.finish().expect("finish");
    assert_eq!(fs::read(dir.path().join("fs/s1.stream")).expect("stored"), data);
    assert_eq!(store.versions("fs").expect("versions").len(), 1);
    assert_eq!(store.filesystems().expect("list")[0].resume_token, "", "no partial left");
}

#[test]
fn a_partial_record_without_its_stream_is_dropped_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let sink = store.receive(&spec(0, None)).expect("receive");
    drop(sink);
    fs::remove_file(dir.path().join("fs/s1.stream.partial")).expect("simulate the crash window");
    let fs = store.filesystems().expect("listing still works");
    assert_eq!(fs[0].resume_token, "");
    assert!(!dir.path().join("fs/s1.meta.partial").exists(), "the stale record is gone");
}

#[test]
fn bit_rot_in_a_stored_stream_fails_the_send_at_its_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let mut sink = store.receive(&spec(0, None)).expect("receive");
    sink.write(&[1u8; 50_000]).expect("write");
    sink.finish().expect("finish");
    let path = dir.path().join("fs/s1.stream");
    let mut bytes = fs::read(&path).expect("read");
    bytes[40_000] ^= 0x80;
    fs::write(&path, bytes).expect("rot");
    let send = SendSpec { filesystem: "fs".into(), to: version("s1", 7), ..Default::default() };
    let mut stream = store.send(&send).expect("opens");
    let mut out = Vec::new();
    let err = stream.reader.read_to_end(&mut out).expect_err("damage found");
    assert!(err.to_string().contains("is damaged"), "{err}");
}
