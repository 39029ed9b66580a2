//! Devices: opening the one that serves an IP address (by its RoCE v2 GID, or on InfiniBand by the
//! IPoIB interface that has it: `getifaddrs` names the interface, `ipoib.rs` its port), listing all
//! of them for `rdma-rpc devices`, and checking the locked-memory limit before registering buffers.

use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;

use sideway::ibverbs::address::{Gid, GidType};
use sideway::ibverbs::device::{DeviceInfo, DeviceList};
use sideway::ibverbs::device_context::{DeviceContext, LinkLayer, Mtu, PortState};
use sideway::ibverbs::protection_domain::ProtectionDomain;

use crate::RdmaError;
use crate::ipoib::IbPort;
use crate::route::Link;

/// Where the kernel shows devices and netdevs.
const SYSFS: &str = "/sys";

/// A device opened for one connection: the port and GID that carry the local address.
pub(crate) struct OpenDevice {
    pub(crate) name: String,
    pub(crate) context: Arc<DeviceContext>,
    pub(crate) pd: Arc<ProtectionDomain>,
    pub(crate) port: u8,
    pub(crate) gid_index: u8,
    pub(crate) gid: Gid,
    pub(crate) mtu: Mtu,
    /// The port's LID (InfiniBand; 0 on RoCE).
    pub(crate) lid: u16,
    pub(crate) link: Link,
}

fn device_list() -> Result<DeviceList, RdmaError> {
    DeviceList::new().map_err(|err| {
        let text = err.to_string();
        let detail = std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default();
        RdmaError::Unavailable {
            reason: format!(
                "cannot list RDMA devices ({text}: {detail}); install libibverbs1 and ibverbs-providers, and load \
                 the NIC's RDMA driver (or soft-RoCE: `modprobe rdma_rxe && rdma link add rxe0 type rxe netdev IFACE`)"
            ),
        }
    })
}

fn gid_matches(gid: Gid, ip: IpAddr) -> bool {
    let gid = Ipv6Addr::from(gid);
    match ip {
        IpAddr::V4(v4) => gid.to_ipv4_mapped() == Some(v4),
        IpAddr::V6(v6) => gid == v6,
    }
}

/// Opens the device (or `wanted`) whose active port carries `local_ip`: a RoCE v2 GID for the
/// address, or else the InfiniBand port whose IPoIB interface has it (`ipoib.rs`).
pub(crate) fn open_for_address(wanted: Option<&str>, local_ip: IpAddr) -> Result<OpenDevice, RdmaError> {
    let list = device_list()?;
    if list.is_empty() {
        return Err(RdmaError::Unavailable { reason: "no RDMA device is registered on this host".into() });
    }
    let mut tried = Vec::new();
    let mut seen_wanted = false;
    for device in list.iter() {
        let name = device.name();
        if wanted.is_some_and(|w| w != name) {
            continue;
        }
        seen_wanted = true;
        let context = device
            .open()
            .map_err(|e| RdmaError::verbs(format!("ibv_open_device({name})"), std::io::Error::other(e)))?;
        let table = match context.query_gid_table() {
            Ok(table) => table,
            Err(err) => {
                tried.push(format!("{name}: GID table unreadable ({err})"));
                continue;
            }
        };
        let Some(entry) = table.iter().find(|e| e.gid_type() == GidType::RoceV2 && gid_matches(e.gid(), local_ip))
        else {
            tried.push(format!("{name}: no RoCE v2 GID for {local_ip}"));
            continue;
        };
        let port = u8::try_from(entry.port_num()).unwrap_or(1);
        let attr = context
            .query_port(port)
            .map_err(|e| RdmaError::verbs(format!("ibv_query_port({name}, {port})"), std::io::Error::other(e)))?;
        if attr.port_state() != PortState::Active {
            tried.push(format!("{name} port {port}: state {:?}, not Active", attr.port_state()));
            continue;
        }
        let pd = context
            .alloc_pd()
            .map_err(|e| RdmaError::verbs(format!("ibv_alloc_pd({name})"), std::io::Error::other(e)))?;
        return Ok(OpenDevice {
            name: name.to_string(),
            port,
            gid_index: u8::try_from(entry.gid_index()).unwrap_or(0),
            gid: entry.gid(),
            mtu: attr.active_mtu(),
            lid: 0,
            link: Link::Ethernet,
            pd,
            context,
        });
    }
    if let Some(w) = wanted.filter(|_| !seen_wanted) {
        return Err(RdmaError::Unavailable { reason: format!("RDMA device {w} not found") });
    }
    match infiniband_port_for(local_ip) {
        Ok(ib) if wanted.is_none_or(|w| w == ib.device) => match open_infiniband(&list, &ib) {
            Ok(device) => return Ok(device),
            Err(reason) => tried.push(reason),
        },
        Ok(ib) => {
            tried.push(format!("{local_ip} is on InfiniBand {} port {}, not the configured device", ib.device, ib.port))
        }
        Err(reason) => tried.push(reason),
    }
    let reason = format!(
        "no active RDMA port carries {local_ip} ({}): bind the RDMA device to the interface carrying that address \
         (RoCE v2 GID, or the IPoIB interface of an InfiniBand port)",
        tried.join("; ")
    );
    Err(RdmaError::Unavailable { reason })
}

/// The InfiniBand port whose IPoIB interface has `local_ip`, or why there is none.
fn infiniband_port_for(local_ip: IpAddr) -> Result<IbPort, String> {
    let netdev = match interface_of(local_ip) {
        Ok(Some(netdev)) => netdev,
        Ok(None) => return Err(format!("no network interface has {local_ip}")),
        Err(err) => return Err(format!("cannot list network interfaces (getifaddrs: {err})")),
    };
    crate::ipoib::port_of_netdev(Path::new(SYSFS), &netdev)
}

/// The name of the interface that has `ip` (an IPv4-mapped IPv6 address counts as its IPv4
/// address), or `None` when no interface has it.
fn interface_of(ip: IpAddr) -> io::Result<Option<String>> {
    let ip = ip.to_canonical();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs stores the head of a list it allocated into `head`, which we own until
    // the freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, which is not freed yet.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a non-null ifa_addr points to a socket address whose family names its type.
        let address = unsafe { address_of(entry.ifa_addr) };
        if address == Some(ip) {
            // SAFETY: a non-null ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { CStr::from_ptr(entry.ifa_name) };
            found = Some(name.to_string_lossy().into_owned());
            break;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once; `entry` references end above.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// The IP address in a socket address, for the IPv4 and IPv6 families.
///
/// # Safety
/// `addr` must point to a valid socket address of the size its `sa_family` implies.
unsafe fn address_of(addr: *const libc::sockaddr) -> Option<IpAddr> {
    // SAFETY: the caller guarantees `addr` is valid; every socket address starts with sa_family.
    let family = i32::from(unsafe { (*addr).sa_family });
    match family {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in (read unaligned to assume nothing).
            let v4 = unsafe { std::ptr::read_unaligned(addr.cast::<libc::sockaddr_in>()) };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let v6 = unsafe { std::ptr::read_unaligned(addr.cast::<libc::sockaddr_in6>()) };
            Some(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)).to_canonical())
        }
        _ => None,
    }
}

/// Opens the InfiniBand port `ib`: it must be Active with a LID from the subnet manager; its GID
/// is the port GID (index 0).
fn open_infiniband(list: &DeviceList, ib: &IbPort) -> Result<OpenDevice, String> {
    let (name, port) = (ib.device.as_str(), ib.port);
    let device = list.iter().find(|d| d.name() == name).ok_or_else(|| format!("{name}: not listed by libibverbs"))?;
    let context = device.open().map_err(|e| format!("{name}: ibv_open_device failed ({e})"))?;
    let attr = context.query_port(port).map_err(|e| format!("{name} port {port}: ibv_query_port failed ({e})"))?;
    if attr.link_layer() != LinkLayer::InfiniBand {
        return Err(format!("{name} port {port}: link layer {:?}, not InfiniBand", attr.link_layer()));
    }
    if attr.port_state() != PortState::Active {
        return Err(format!("{name} port {port}: state {:?}, not Active", attr.port_state()));
    }
    if attr.lid() == 0 {
        return Err(format!("{name} port {port}: no LID assigned (is a subnet manager running?)"));
    }
    let gid = context.query_gid(port, 0).map_err(|e| format!("{name} port {port}: ibv_query_gid failed ({e})"))?;
    let pd = context.alloc_pd().map_err(|e| format!("{name}: ibv_alloc_pd failed ({e})"))?;
    Ok(OpenDevice {
        name: name.to_string(),
        port,
        gid_index: 0,
        gid,
        mtu: attr.active_mtu(),
        lid: attr.lid(),
        link: Link::InfiniBand,
        pd,
        context,
    })
}

/// One GID of a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GidSummary {
    /// Index in the GID table.
    pub index: u32,
    /// The GID as an IPv6 address (IPv4-mapped for RoCE over IPv4).
    pub gid: Ipv6Addr,
    /// "IB", "RoCEv1", "RoCEv2".
    pub kind: &'static str,
    /// The network interface it belongs to.
    pub netdev: Option<String>,
}

/// One port of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSummary {
    /// Port number (from 1).
    pub number: u8,
    /// "Active", "Down", ...
    pub state: String,
    /// "Ethernet" (RoCE) or "InfiniBand".
    pub link_layer: String,
    /// Active MTU in bytes.
    pub mtu: u32,
    /// Valid GIDs.
    pub gids: Vec<GidSummary>,
}

/// One device, as libibverbs sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSummary {
    /// Device name.
    pub name: String,
    /// Its ports.
    pub ports: Vec<PortSummary>,
}

/// Lists the devices libibverbs sees, or says why it sees none.
pub fn list_devices() -> Result<Vec<DeviceSummary>, RdmaError> {
    let list = device_list()?;
    let mut out = Vec::new();
    for device in list.iter() {
        let name = device.name().to_string();
        let context = device
            .open()
            .map_err(|e| RdmaError::verbs(format!("ibv_open_device({name})"), std::io::Error::other(e)))?;
        let ports_count = context.query_device().map(|a| a.phys_port_cnt()).unwrap_or(1);
        let table = context.query_gid_table().unwrap_or_default();
        let mut ports = Vec::new();
        for number in 1..=ports_count {
            let Ok(attr) = context.query_port(number) else { continue };
            let gids = table
                .iter()
                .filter(|e| e.port_num() == u32::from(number))
                .map(|e| GidSummary {
                    index: e.gid_index(),
                    gid: Ipv6Addr::from(e.gid()),
                    kind: match e.gid_type() {
                        GidType::InfiniBand => "IB",
                        GidType::RoceV1 => "RoCEv1",
                        GidType::RoceV2 => "RoCEv2",
                    },
                    netdev: e.netdev_name().ok(),
                })
                .collect();
            ports.push(PortSummary {
                number,
                state: format!("{:?}", attr.port_state()),
                link_layer: match attr.link_layer() {
                    LinkLayer::Ethernet => "Ethernet".into(),
                    LinkLayer::InfiniBand => "InfiniBand".into(),
                    other => format!("{other:?}"),
                },
                mtu: mtu_bytes(attr.active_mtu()),
                gids,
            });
        }
        out.push(DeviceSummary { name, ports });
    }
    Ok(out)
}

/// MTU in bytes.
pub(crate) fn mtu_bytes(mtu: Mtu) -> u32 {
    match mtu {
        Mtu::Mtu256 => 256,
        Mtu::Mtu512 => 512,
        Mtu::Mtu1024 => 1024,
        Mtu::Mtu2048 => 2048,
        Mtu::Mtu4096 => 4096,
    }
}

/// Checks that `needed` bytes can be locked (registered), naming the fix when they cannot.
pub(crate) fn check_memlock(needed: usize) -> Result<(), RdmaError> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we own; RLIMIT_MEMLOCK is a valid resource.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if rc != 0 {
        return Err(RdmaError::verbs("getrlimit(RLIMIT_MEMLOCK)", io::Error::last_os_error()));
    }
    // Root (CAP_IPC_LOCK) may lock past the limit.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && limit.rlim_cur != libc::RLIM_INFINITY && (needed as u64) > limit.rlim_cur {
        return Err(RdmaError::MemLock { needed, limit: limit.rlim_cur });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_belongs_to_lo_and_unassigned_addresses_to_nothing() {
        let lo = interface_of(IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("getifaddrs works");
        assert_eq!(lo.as_deref(), Some("lo"));
        let mapped = interface_of(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped())).expect("getifaddrs works");
        assert_eq!(mapped.as_deref(), Some("lo"), "an IPv4-mapped address is its IPv4 address");
        let none = interface_of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 123))).expect("getifaddrs works");
        assert_eq!(none, None, "TEST-NET-1 is assigned to no interface");
    }
}
