//! `rdma-rpc devices`: the host's RDMA devices as the kernel shows them in sysfs
//! (`/sys/class/infiniband/<dev>/`; InfiniBand ports also with their LID and subnet manager's LID),
//! whether the verbs library is installed, and whether this build can use them. Plain `std::fs` reads; nothing is opened through verbs. It is a report: it
//! succeeds whatever it finds, and says precisely why when there is nothing.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where the kernel lists RDMA devices.
const SYSFS_ROOT: &str = "/sys/class/infiniband";

/// Where distributions install the verbs library.
const LIBIBVERBS_PATHS: [&str; 3] =
    ["/usr/lib/x86_64-linux-gnu/libibverbs.so.1", "/usr/lib64/libibverbs.so.1", "/usr/lib/libibverbs.so.1"];

const SOFT_ROCE_FIX: &str = "On a RoCE-capable host: `modprobe rdma_rxe && rdma link add rxe0 type rxe netdev eth0` \
     for soft-RoCE, or load your NIC's driver (mlx5_ib, ...)";

/// Prints the report on stdout.
pub fn run() {
    print!("{}", report(Path::new(SYSFS_ROOT), libibverbs()));
}

/// What sysfs shows.
#[derive(Debug)]
enum Scan {
    /// No `/sys/class/infiniband`: no RDMA core in this kernel.
    NoRdmaCore,
    /// The directory exists but cannot be read.
    Unreadable(io::Error),
    /// Devices, possibly none.
    Devices(Vec<Device>),
}

#[derive(Debug)]
struct Device {
    name: String,
    node_type: Option<String>,
    fw_ver: Option<String>,
    ports: Vec<Port>,
}

#[derive(Debug)]
struct Port {
    number: String,
    state: Option<String>,
    link_layer: Option<String>,
    /// InfiniBand only (RoCE ports have no LID): the port's LID and its subnet manager's.
    lid: Option<String>,
    sm_lid: Option<String>,
    active_mtu: Option<String>,
    gids: Vec<Gid>,
}

#[derive(Debug)]
struct Gid {
    index: u32,
    gid: String,
    kind: Option<String>,
    netdev: Option<String>,
}

/// The full report for the sysfs tree at `root`.
fn report(root: &Path, libibverbs: Option<PathBuf>) -> String {
    let mut out = String::new();
    match scan(root) {
        Scan::NoRdmaCore => {
            let _ = writeln!(
                out,
                "no RDMA devices: this kernel has no RDMA core ({} is missing). {SOFT_ROCE_FIX}",
                root.display()
            );
        }
        Scan::Unreadable(err) => {
            let _ = writeln!(out, "no RDMA devices listed: cannot read {}: {err}", root.display());
        }
        Scan::Devices(devices) if devices.is_empty() => {
            let _ = writeln!(
                out,
                "no RDMA devices: the kernel has an RDMA core but no RDMA device is registered ({} is empty). \
                 {SOFT_ROCE_FIX}",
                root.display()
            );
        }
        Scan::Devices(devices) => {
            for device in &devices {
                render(&mut out, device);
            }
        }
    }
    let _ = match libibverbs {
        Some(path) => writeln!(out, "libibverbs: {} (present)", path.display()),
        None => writeln!(
            out,
            "libibverbs: libibverbs.so.1 not found in {}; install rdma-core (Debian/Ubuntu: `apt install \
             libibverbs1 ibverbs-providers`, RHEL/Fedora: `dnf install libibverbs`)",
            LIBIBVERBS_PATHS.join(", ")
        ),
    };
    let _ = match crate::transport::rdma::verbs::list_devices() {
        Ok(devices) if !devices.is_empty() => {
            let names: Vec<String> = devices
                .iter()
                .map(|d| {
                    let active = d.ports.iter().filter(|p| p.state == "Active").count();
                    format!("{} ({active} active port(s))", d.name)
                })
                .collect();
            writeln!(out, "rdma transport: available through libibverbs on {}", names.join(", "))
        }
        Ok(_) => writeln!(
            out,
            "rdma transport: not available: libibverbs sees no device; rdma:// URLs fall back to TCP unless \
             --no-fallback is given"
        ),
        Err(err) => writeln!(
            out,
            "rdma transport: not available: {err}; rdma:// URLs fall back to TCP unless --no-fallback is given"
        ),
    };
    out
}

fn render(out: &mut String, device: &Device) {
    let _ = write!(out, "{}: node_type {}", device.name, device.node_type.as_deref().unwrap_or("?"));
    if let Some(fw) = &device.fw_ver {
        let _ = write!(out, ", fw_ver {fw}");
    }
    let _ = writeln!(out);
    if device.ports.is_empty() {
        let _ = writeln!(out, "  no ports listed");
    }
    for port in &device.ports {
        let _ = write!(
            out,
            "  port {}: state {}, link_layer {}",
            port.number,
            port.state.as_deref().unwrap_or("?"),
            port.link_layer.as_deref().unwrap_or("?"),
        );
        if port.link_layer.as_deref() == Some("InfiniBand") {
            let (lid, sm_lid) = (port.lid.as_deref().unwrap_or("?"), port.sm_lid.as_deref().unwrap_or("?"));
            let _ = write!(out, ", lid {lid}, sm_lid {sm_lid}");
        }
        let _ = writeln!(out, ", active_mtu {}", port.active_mtu.as_deref().unwrap_or("?"));
        for gid in &port.gids {
            let _ = write!(out, "    gid[{}] {}", gid.index, gid.gid);
            let extra: Vec<&str> = [gid.kind.as_deref(), gid.netdev.as_deref()].into_iter().flatten().collect();
            if !extra.is_empty() {
                let _ = write!(out, " ({})", extra.join(", "));
            }
            let _ = writeln!(out);
        }
    }
}

fn scan(root: &Path) -> Scan {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Scan::NoRdmaCore,
        Err(err) => return Scan::Unreadable(err),
    };
    let mut devices: Vec<Device> = entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            Device {
                name: entry.file_name().to_string_lossy().into_owned(),
                node_type: read(&path.join("node_type")),
                fw_ver: read(&path.join("fw_ver")),
                ports: ports(&path.join("ports")),
            }
        })
        .collect();
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    Scan::Devices(devices)
}

fn ports(dir: &Path) -> Vec<Port> {
    let mut ports: Vec<(u32, Port)> = numbered(dir)
        .into_iter()
        .map(|(n, path)| {
            let port = Port {
                number: n.to_string(),
                state: read(&path.join("state")),
                link_layer: read(&path.join("link_layer")),
                lid: read(&path.join("lid")),
                sm_lid: read(&path.join("sm_lid")),
                active_mtu: read(&path.join("active_mtu")),
                gids: gids(&path),
            };
            (n, port)
        })
        .collect();
    ports.sort_by_key(|(n, _)| *n);
    ports.into_iter().map(|(_, port)| port).collect()
}

fn gids(port: &Path) -> Vec<Gid> {
    let mut gids: Vec<Gid> = numbered(&port.join("gids"))
        .into_iter()
        .filter_map(|(index, path)| {
            let gid = read(&path)?;
            if gid.chars().all(|c| c == '0' || c == ':') {
                return None;
            }
            let kind = read(&port.join("gid_attrs/types").join(index.to_string()));
            let netdev = read(&port.join("gid_attrs/ndevs").join(index.to_string()));
            Some(Gid { index, gid, kind, netdev })
        })
        .collect();
    gids.sort_by_key(|gid| gid.index);
    gids
}

/// The IPv4 address of the first active RoCE v2 port, if this host has one: where the demo can
/// use RDMA (loopback through the device) instead of TCP.
pub(crate) fn active_roce_ipv4() -> Option<std::net::Ipv4Addr> {
    let Scan::Devices(devices) = scan(Path::new(SYSFS_ROOT)) else { return None };
    devices
        .iter()
        .flat_map(|device| &device.ports)
        .filter(|port| port.state.as_deref().is_some_and(|state| state.contains("ACTIVE")))
        .flat_map(|port| &port.gids)
        .filter(|gid| gid.kind.as_deref().is_some_and(|kind| kind.contains("v2")))
        .find_map(|gid| ipv4_of_gid(&gid.gid))
}

/// The IPv4 address in an IPv4-mapped GID (`0000:…:ffff:0a4d:0001` is 10.77.0.1).
fn ipv4_of_gid(gid: &str) -> Option<std::net::Ipv4Addr> {
    let ip: std::net::Ipv6Addr = gid.parse().ok()?;
    ip.to_ipv4_mapped()
}

/// The entries of `dir` whose names are numbers (ports, GID indices).
fn numbered(dir: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path()))).collect()
}

/// A sysfs attribute, trimmed; `None` if absent, unreadable (sysfs refuses some reads with EINVAL)
/// or empty.
fn read(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn libibverbs() -> Option<PathBuf> {
    LIBIBVERBS_PATHS.iter().map(PathBuf::from).find(|path| path.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory under the system temp dir, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("rdma-rpc-devices-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create scratch dir");
            Scratch(dir)
        }

        fn write(&self, rel: &str, text: &str) {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().expect("has a parent")).expect("create dirs");
            fs::write(path, text).expect("write file");
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn ipv4_mapped_gids_give_addresses() {
        assert_eq!(ipv4_of_gid("0000:0000:0000:0000:0000:ffff:0a4d:0001"), Some(std::net::Ipv4Addr::new(10, 77, 0, 1)));
        assert_eq!(ipv4_of_gid("fe80:0000:0000:0000:5054:00ff:fe12:3456"), None);
    }

    #[test]
    fn missing_root_means_no_rdma_core() {
        let scratch = Scratch::new("missing");
        let text = report(&scratch.0.join("infiniband"), None);
        assert!(text.contains("this kernel has no RDMA core"), "{text}");
        assert!(text.contains("modprobe rdma_rxe && rdma link add rxe0 type rxe netdev eth0"), "{text}");
        assert!(text.contains("libibverbs.so.1 not found"), "{text}");
        assert!(text.contains("rdma transport: "), "{text}");
    }

    #[test]
    fn empty_root_means_no_device_registered() {
        let scratch = Scratch::new("empty");
        let text = report(&scratch.0, Some(PathBuf::from("/x/libibverbs.so.1")));
        assert!(text.contains("no RDMA device is registered"), "{text}");
        assert!(text.contains("libibverbs: /x/libibverbs.so.1 (present)"), "{text}");
    }

    #[test]
    fn devices_ports_and_nonzero_gids_are_listed() {
        let scratch = Scratch::new("devices");
        scratch.write("rxe0/node_type", "1: CA\n");
        scratch.write("rxe0/ports/1/state", "4: ACTIVE\n");
        scratch.write("rxe0/ports/1/link_layer", "Ethernet\n");
        scratch.write("rxe0/ports/1/active_mtu", "1024 (3)\n");
        scratch.write("rxe0/ports/1/gids/0", "fe80:0000:0000:0000:0242:acff:fe11:0002\n");
        scratch.write("rxe0/ports/1/gids/1", "0000:0000:0000:0000:0000:0000:0000:0000\n");
        scratch.write("rxe0/ports/1/gids/10", "0000:0000:0000:0000:0000:ffff:ac11:0002\n");
        scratch.write("rxe0/ports/1/gid_attrs/types/0", "RoCE v2\n");
        scratch.write("rxe0/ports/1/gid_attrs/ndevs/0", "eth0\n");
        scratch.write("mlx5_0/node_type", "1: CA\n");
        scratch.write("mlx5_0/fw_ver", "16.35.2000\n");
        let text = report(&scratch.0, None);
        let expected = "\
mlx5_0: node_type 1: CA, fw_ver 16.35.2000
  no ports listed
rxe0: node_type 1: CA
  port 1: state 4: ACTIVE, link_layer Ethernet, active_mtu 1024 (3)
    gid[0] fe80:0000:0000:0000:0242:acff:fe11:0002 (RoCE v2, eth0)
    gid[10] 0000:0000:0000:0000:0000:ffff:ac11:0002
";
        assert!(text.starts_with(expected), "{text}");
    }

    #[test]
    fn infiniband_ports_show_their_lid_and_sm_lid() {
        let scratch = Scratch::new("infiniband");
        scratch.write("mlx5_0/node_type", "1: CA\n");
        scratch.write("mlx5_0/ports/1/state", "4: ACTIVE\n");
        scratch.write("mlx5_0/ports/1/link_layer", "InfiniBand\n");
        scratch.write("mlx5_0/ports/1/lid", "0x3\n");
        scratch.write("mlx5_0/ports/1/sm_lid", "0x1\n");
        scratch.write("mlx5_0/ports/1/active_mtu", "4096 (5)\n");
        scratch.write("mlx5_0/ports/1/gids/0", "fe80:0000:0000:0000:0002:c903:000a:bcde\n");
        scratch.write("mlx5_0/ports/2/state", "1: DOWN\n");
        scratch.write("mlx5_0/ports/2/link_layer", "InfiniBand\n");
        scratch.write("mlx5_0/ports/2/active_mtu", "4096 (5)\n");
        // A RoCE port's lid file (0x0) means nothing: it is not shown.
        scratch.write("rxe0/node_type", "1: CA\n");
        scratch.write("rxe0/ports/1/state", "4: ACTIVE\n");
        scratch.write("rxe0/ports/1/link_layer", "Ethernet\n");
        scratch.write("rxe0/ports/1/lid", "0x0\n");
        scratch.write("rxe0/ports/1/active_mtu", "1024 (3)\n");
        let text = report(&scratch.0, None);
        let expected = "\
mlx5_0: node_type 1: CA
  port 1: state 4: ACTIVE, link_layer InfiniBand, lid 0x3, sm_lid 0x1, active_mtu 4096 (5)
    gid[0] fe80:0000:0000:0000:0002:c903:000a:bcde
  port 2: state 1: DOWN, link_layer InfiniBand, lid ?, sm_lid ?, active_mtu 4096 (5)
rxe0: node_type 1: CA
  port 1: state 4: ACTIVE, link_layer Ethernet, active_mtu 1024 (3)
";
        assert!(text.starts_with(expected), "{text}");
    }
}
