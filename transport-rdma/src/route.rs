//! How this side's queue pair addresses the peer's when it moves to RTR: the fields of the address
//! vector, chosen from what each side announced in the handshake (its link layer, GID and LID).
//!
//! - **RoCE** (Ethernet link layer): always a global route (GRH) to the peer's GID, from the local
//!   GID index that carries the connection's address (RoCE v2 is routed by IP). The LID is unused.
//! - **InfiniBand**: the subnet manager's LIDs route within a subnet. When both GIDs have the same
//!   subnet prefix (their upper 64 bits) the peer is addressed by its LID alone, without a GRH;
//!   otherwise a GRH to the peer's port GID (index 0) is added, with the peer's LID as the
//!   destination LID (a router's LID is not discovered here: cross-subnet needs the subnet manager
//!   to route the peer's LID, as perftest also assumes).
//!
//! This is a pure function so it is unit-tested without hardware; `verbs/qp.rs` applies it.

use crate::verbs::QpEndpoint;

/// Hop limit of the global route header: enough for any routed fabric.
const HOP_LIMIT: u8 = 64;
/// Unicast LIDs are 0x0001..=0xbfff; 0 is "not assigned", 0xc000 and up are multicast.
const LAST_UNICAST_LID: u16 = 0xbfff;

/// The link layer of a port, as the handshake carries it (one byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// Ethernet: RoCE.
    Ethernet,
    /// InfiniBand: LIDs assigned by the subnet manager.
    InfiniBand,
}

impl Link {
    /// The byte the handshake sends.
    pub(crate) fn code(self) -> u8 {
        match self {
            Link::Ethernet => 1,
            Link::InfiniBand => 2,
        }
    }

    /// The link layer a handshake byte names, if any.
    pub(crate) fn from_code(code: u8) -> Option<Link> {
        match code {
            1 => Some(Link::Ethernet),
            2 => Some(Link::InfiniBand),
            _ => None,
        }
    }

    /// For messages: "Ethernet (RoCE)" or "InfiniBand".
    pub(crate) fn name(self) -> &'static str {
        match self {
            Link::Ethernet => "Ethernet (RoCE)",
            Link::InfiniBand => "InfiniBand",
        }
    }
}

/// The global route header of an address vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GlobalRoute {
    /// The peer's GID.
    pub(crate) dgid: [u8; 16],
    /// This side's GID index (the source GID).
    pub(crate) sgid_index: u8,
    /// Router hops allowed.
    pub(crate) hop_limit: u8,
}

/// The address vector fields of RTR (besides the port, which is the local port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AddressVector {
    /// Destination LID: the peer's on InfiniBand, 0 on RoCE.
    pub(crate) dlid: u16,
    /// A global route, or `None` to address by LID alone.
    pub(crate) grh: Option<GlobalRoute>,
}

/// The address vector for reaching `remote` from `local` (this side's announced endpoint, whose
/// GID is at `sgid_index`), or why the peer cannot be reached: the link layers differ, or its
/// InfiniBand LID is unusable. The handshake refuses such a peer with this reason (`Offer::mismatch`).
pub(crate) fn address_vector(local: &QpEndpoint, remote: &QpEndpoint, sgid_index: u8) -> Result<AddressVector, String> {
    if local.link != remote.link {
        return Err(format!(
            "link layers differ (peer {}, here {}): RoCE and InfiniBand ports cannot connect",
            remote.link.name(),
            local.link.name()
        ));
    }
    let global = GlobalRoute { dgid: remote.gid, sgid_index, hop_limit: HOP_LIMIT };
    match local.link {
        Link::Ethernet => Ok(AddressVector { dlid: 0, grh: Some(global) }),
        Link::InfiniBand => {
            if remote.lid == 0 || remote.lid > LAST_UNICAST_LID {
                return Err(format!(
                    "the peer's InfiniBand LID {:#x} is not a unicast LID (is its subnet manager running?)",
                    remote.lid
                ));
            }
            let grh = (!same_subnet(&local.gid, &remote.gid)).then_some(global);
            Ok(AddressVector { dlid: remote.lid, grh })
        }
    }
}

/// Whether two port GIDs have the same subnet prefix (upper 64 bits).
pub(crate) fn same_subnet(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a[..8] == b[..8]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(link: Link, gid: [u8; 16], lid: u16) -> QpEndpoint {
        QpEndpoint { qpn: 0x10, psn: 0x20, gid, mtu: 4096, lid, link }
    }

    /// A port GID: subnet prefix `prefix`, GUID `guid`.
    fn ib_gid(prefix: u64, guid: u64) -> [u8; 16] {
        let mut gid = [0u8; 16];
        gid[..8].copy_from_slice(&prefix.to_be_bytes());
        gid[8..].copy_from_slice(&guid.to_be_bytes());
        gid
    }

    #[test]
    fn roce_is_always_global_to_the_peer_gid() {
        let mut here = [0u8; 16];
        here[10..].copy_from_slice(&[0xff, 0xff, 10, 77, 0, 1]);
        let mut there = here;
        there[15] = 2;
        let av = address_vector(&endpoint(Link::Ethernet, here, 0), &endpoint(Link::Ethernet, there, 0), 1)
            .expect("RoCE connects");
        assert_eq!(av, AddressVector { dlid: 0, grh: Some(GlobalRoute { dgid: there, sgid_index: 1, hop_limit: 64 }) });
    }

    #[test]
    fn infiniband_in_one_subnet_uses_the_lid_alone() {
        let here = endpoint(Link::InfiniBand, ib_gid(0xfe80_0000_0000_0000, 0x0002_c903_000a_0001), 3);
        let there = endpoint(Link::InfiniBand, ib_gid(0xfe80_0000_0000_0000, 0x0002_c903_000a_0002), 7);
        let av = address_vector(&here, &there, 0).expect("same subnet connects");
        assert_eq!(av, AddressVector { dlid: 7, grh: None });
    }

    #[test]
    fn infiniband_across_subnets_adds_a_global_route() {
        let here = endpoint(Link::InfiniBand, ib_gid(0xfec0_0000_0000_0001, 1), 3);
        let there_gid = ib_gid(0xfec0_0000_0000_0002, 2);
        let there = endpoint(Link::InfiniBand, there_gid, 9);
        let av = address_vector(&here, &there, 0).expect("routed subnets connect");
        assert_eq!(
            av,
            AddressVector { dlid: 9, grh: Some(GlobalRoute { dgid: there_gid, sgid_index: 0, hop_limit: 64 }) }
        );
    }

    #[test]
    fn unusable_lids_and_mixed_link_layers_are_refused() {
        let gid = ib_gid(0xfe80_0000_0000_0000, 1);
        let here = endpoint(Link::InfiniBand, gid, 3);
        for lid in [0, 0xc000, 0xffff] {
            let err = address_vector(&here, &endpoint(Link::InfiniBand, gid, lid), 0).expect_err("bad LID");
            assert!(err.contains("not a unicast LID"), "{err}");
        }
        let err = address_vector(&here, &endpoint(Link::Ethernet, gid, 0), 0).expect_err("mixed links");
        assert!(err.contains("link layers differ"), "{err}");
    }

    #[test]
    fn link_codes_round_trip() {
        for link in [Link::Ethernet, Link::InfiniBand] {
            assert_eq!(Link::from_code(link.code()), Some(link));
        }
        assert_eq!(Link::from_code(0), None);
        assert_eq!(Link::from_code(3), None);
    }
}
